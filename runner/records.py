"""Typed records for everything the runner persists, with JSON in/out.

Every record is a dataclass; `to_json`/`from_json` round-trip them exactly. `SCHEMA_VERSION` is written
into each `CellRecord` so replay can refuse records it does not understand; older versions listed in
`READABLE_SCHEMAS` are upgraded on read.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)

Status = Literal["ok", "skipped", "failed"]
FinishReason = Literal["stop", "length"]


@dataclass
class SamplerParams:
    """The one sampler every format receives (the generation contract)."""

    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repetition_penalty: float
    max_tokens: int
    seed: int


@dataclass
class ArtifactInfo:
    """A prepared (converted / quantized) model in the artifact store."""

    key: str
    path: str
    size_bytes: int
    bits_per_weight: float | None
    build_s: float
    cache_hit: bool
    tool_versions: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class ModelSourceInfo:
    """Where the HF checkpoint came from and the hash of its content."""

    name: str
    kind: str  # builder | local | hub
    path: str
    content_hash: str
    revision: str | None = None
    n_params: int | None = None
    gguf_path: str | None = None  # a model given as a GGUF file: that file (every GGUF build starts from it)
    gguf_type: str | None = None  # its llama.cpp type (F16, Q4_K_M, ...)
    requantized_from: str | None = None  # its type when it is already quantized: every build is requantized
    dequantize_dtype: str | None = None  # the dtype of its dequantized weights (MLX builds start from them)


@dataclass
class Judgment:
    """One judge verdict. `scores is None` means the judgment failed: see `error`. Never 0 for a failure."""

    judge_model: str
    rubric_version: str
    scores: dict[str, int] | None = None  # overall, accuracy, coherence, relevance
    reasoning: str | None = None
    error: str | None = None
    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    cache_hit: bool = False
    key: str = ""
    answer_truncated: bool = False  # the judged answer was cut at max_tokens (the judge was told)
    winner: str | None = None  # judge.mode=pairwise: build | baseline | tie (scores then {}), see `order`
    order: int | None = None  # pairwise: 0 the baseline's answer was shown first, 1 the build's


@dataclass
class Generation:
    """One answer to one prompt, with its speed (NaN: not measurable, e.g. gen tok/s of a 1-token answer)."""

    text: str  # raw decoded completion, thinking included
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    ttft_s: float
    prompt_tps: float
    gen_tps: float
    wall_s: float
    peak_rss_mb: float | None = None
    measured_on: str = ""  # `fingerprint/device/threads` where the speed was measured (host.measured_on; "" = unknown)
    parallel_jobs: int = 1  # cells the launcher ran at once while this was measured


@dataclass
class CheckOutcome:
    """A prompt's ground-truth check on one answer (runner/checks.py): never an error, a reason when failed."""

    passed: bool
    detail: str
    transient: bool = False  # failed for a reason outside the answer (timeout, signal, sandbox): not cached


@dataclass
class PromptResult:
    """A prompt's rendered input, its generation and (when scored) judgment and agreement."""

    prompt_id: str
    category: str
    repeat: int
    prompt_text: str  # the user message, as judges see it
    reference: str | None  # the prompt set's own reference answer, if any
    rendered_prompt: str
    prompt_token_ids_sha: str
    generation_key: str
    generation: Generation
    answer: str  # `generation.text` with <think>…</think> removed: what judges see
    thinking_tokens: int = 0
    cache_hit: bool = False
    judgments: list[Judgment] = field(default_factory=list)  # one per judge repeat; empty: not judged
    check: CheckOutcome | None = None  # the prompt's check on this answer; None: the prompt has none
    agreement: dict[str, float] | None = None  # vs the baseline build's answer


@dataclass
class GenerationContract:
    """Everything that makes generations comparable across formats; the report prints it."""

    sampler: SamplerParams
    chat_template_sha: str
    enable_thinking: bool | None  # None: the template has no such switch
    stop_token_ids: list[int]
    tokenizer_path: str
    strip_thinking: bool = True
    chat: bool = True  # False: prompts completed as plain text (generation.chat=false, base models)


@dataclass
class SpeedStats:
    """Per-cell aggregates over the answers whose speed was measured on this cell's host and device."""

    n: int
    s_per_prompt: float
    prompt_tps: float
    gen_tps: float
    ttft_s: float
    mean_tokens: float
    truncated_pct: float
    peak_rss_mb: float | None
    stale_answers: int = 0  # cached answers measured on another host or device: excluded from the speed figures
    parallel_jobs: int = 1  # the most cells the launcher ran at once while these answers were measured


@dataclass
class SpeedBench:
    """`speed=bench`: llama-bench's protocol in the cell's own engine session (runner/stages/bench.py).

    pp: `pp` random token ids evaluated from an empty context in batches, no sampling; tg: `tg` ids fed one at a
    time from an empty context (each token's logits computed, nothing sampled, so no EOS can stop it). One
    untimed warm-up each (pp: a whole pp run; tg: one token), then `r` timed repetitions. Rates are per
    repetition (tokens / seconds); `*_tps` is their mean, `*_sd` their sample stddev (NaN for r = 1), `*_cv` the
    coefficient of variation in % (100 × sd / mean).
    """

    pp: int
    tg: int
    r: int
    pp_tps: float
    pp_sd: float
    pp_cv: float
    tg_tps: float
    tg_sd: float
    tg_cv: float
    pp_samples_s: list[float] = field(default_factory=list)  # seconds of each timed repetition
    tg_samples_s: list[float] = field(default_factory=list)
    pp_samples_tps: list[float] = field(default_factory=list)  # tokens / seconds of each repetition
    tg_samples_tps: list[float] = field(default_factory=list)
    pp_context: list[int] = field(default_factory=list)  # tokens in the engine's context after each repetition
    tg_context: list[int] = field(default_factory=list)  # (llama.cpp's KV positions, MLX's cache offset)
    pp_batch: int = 0  # tokens per prompt batch (llama.cpp: format.n_batch; MLX: mlx_lm's prefill step)
    threads_pp: int | None = None  # threads of prompt batches (llama.cpp n_threads_batch; MLX: measured)
    threads_tg: int | None = None  # threads of one-token steps (llama.cpp n_threads)
    seed: int = 0  # the random token ids' seed
    ids_sha: str = ""  # sha256 of every bench token id (warm-ups and repetitions): the same in both engines
    measured_on: str = ""  # host.measured_on: hardware fingerprint / device / threads
    parallel_jobs: int = 1  # cells the launcher ran at once while this was measured
    cache_hit: bool = False  # reused from the store (same host, device, threads, engine, artifact, settings)
    key: str = ""  # its store entry ("" when speed.cache=false)


@dataclass
class HostInfo:
    """Where a cell ran. `fingerprint` hashes the fields that change speed (not the host name)."""

    fingerprint: str
    cpu: str
    cores: int
    gpu: str | None
    platform: str
    hostname: str = ""
    scheduler_job: str | None = None  # SLURM_JOB_ID of the job that ran the cell
    array_job: str | None = None
    array_index: int | None = None
    node: str | None = None

    @property
    def hardware(self) -> str:
        """'CPU model × cores (+ GPU)', as the report and compare name it."""
        return f"{self.cpu} × {self.cores}" + (f" + {self.gpu}" if self.gpu else "")


# Thread counts change speed, not outputs: greedy token ids and log-probs were bit-identical across 1-8 threads
# in llama.cpp (tiny model and Gemma 3 270M, F16 to Q4_0; ARCHITECTURE.md). They tag speed, not answers.
THREAD_SETTINGS = ("n_threads", "n_threads_batch")


@dataclass
class RuntimeInfo:
    """How the engine ran a cell, resolved (never `auto`)."""

    device: str  # cpu | metal | cuda | ...
    compute_dtype: str
    settings: dict[str, Any] = field(default_factory=dict)  # resolved engine settings (threads, layers, batch)
    format: dict[str, Any] = field(default_factory=dict)  # the format config as given
    parallel_jobs: int = 1  # cells the launcher runs at once (joblib n_jobs, submitit array parallelism)
    engine: dict[str, str] = field(default_factory=dict)  # what computed: engine name, package and library versions
    cpu_threads: int | None = None  # MLX on the CPU: threads it computed with, measured (it takes no setting)

    def output_settings(self) -> dict[str, Any]:
        """The settings that can change tokens or log-probs (cache keys): all but the thread counts."""
        return {k: v for k, v in self.settings.items() if k not in THREAD_SETTINGS}

    def threads(self) -> str:
        """The thread counts, for speed tags ('' where the engine has none)."""
        return ",".join(f"{k}={self.settings[k]}" for k in THREAD_SETTINGS if k in self.settings)


@dataclass
class FidelityResult:
    """Next-token distribution drift vs the baseline build (e.g. gguf_fp16) on identical token ids."""

    baseline: str
    n_tokens: int
    kld_mean: float
    kld_se: float  # from per-chunk means (positions within a chunk are correlated); NaN below 2 chunks
    kld_median: float
    kld_p99: float
    kld_max: float
    top1_pct: float
    ppl: float
    baseline_ppl: float
    dppl: float
    rms_dp: float
    text_sha: str = ""
    warnings: list[str] = field(default_factory=list)
    peak_rss_mb: float | None = None  # process peak while scoring (bounded by chunk size, not text length)
    n_chunks: int = 0
    top_k: int | None = None  # baseline log-probs kept per position; None: the full vocabulary (exact KLD)
    bos_first: bool = False  # every chunk started with the model's BOS (its tokenizer adds one)
    key: str = ""  # the store entry of this score: two records with one key read the same measurement
    # fidelity.protocol: runner (all positions, top-k + tail) | llamacpp (llama-perplexity --kl-divergence: second
    # half of each chunk, full vocabulary). Records of different protocols are never ranked together.
    protocol: str = "runner"
    corpus_sha: str = ""  # sha256 of the corpus text (text_sha: of the token ids actually scored)
    corpus: str = ""  # where the corpus came from: default, a file, or a dataset spec
    chunk_len: int | None = None  # tokens per chunk (llama-perplexity's n_ctx)
    kld_p95: float | None = None
    kld_se_token: float | None = None  # SE over tokens as llama-perplexity prints it (Mean KLD ± ...)


@dataclass
class CellIdentity:
    model: str
    format: str
    precision: str
    generation: str
    prompts: str
    judge: str
    overrides: list[str] = field(default_factory=list)
    job_num: int | None = None
    artifact: str | None = None  # precision=prebuilt: the evaluated file or folder (artifact.path)
    method: str = "none"  # the quantization method (none, imatrix, ...): part of the build
    calibration: str = "none"  # the calibration data a calibrated method ran on (default, file, dataset)


@dataclass
class CellRecord:
    """`result.json` of one Hydra job: a cell's full outcome, ok or not."""

    cell: CellIdentity
    status: Status
    reason: str | None = None
    schema_version: int = SCHEMA_VERSION
    source: ModelSourceInfo | None = None
    artifact: ArtifactInfo | None = None
    contract: GenerationContract | None = None
    runtime: RuntimeInfo | None = None
    host: HostInfo | None = None
    results: list[PromptResult] = field(default_factory=list)
    speed: SpeedStats | None = None
    bench: SpeedBench | None = None  # speed=bench: llama-bench's protocol (pp / tg, r repetitions)
    fidelity: FidelityResult | None = None
    judge_reference: str = "none"  # what the judge compared answers with: none | prompt | baseline
    judge_note: str | None = None  # why this cell has no judge scores, or what went wrong judging it
    judge_pending: bool = False  # judge.where=end: the submitting process judges it when the sweep ends
    margins: dict[str, float] = field(default_factory=dict)  # verdict.margins: the loss that makes a build worse
    versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    windows: dict[str, list[float]] = field(default_factory=dict)  # stage → [start, end] epoch seconds
    started_at: str = ""
    finished_at: str = ""


# ---------------------------------------------------------------- JSON in/out


def to_dict(record: Any) -> Any:
    return dataclasses.asdict(record)


def to_json(record: Any) -> str:
    return json.dumps(to_dict(record), indent=2, sort_keys=False, allow_nan=True)


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_convert(item_tp, v) for v in value]
    return value


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    return cls(**{k: _convert(hints[k], v) for k, v in data.items()})


def read_cell_record(path: Path) -> CellRecord:
    """Load a `result.json`; one clear error for unreadable files or other schema versions."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable cell record ({e})") from e
    version = data.get("schema_version")
    if version not in READABLE_SCHEMAS:
        raise ValueError(f"{path}: record schema_version {version!r}, this runner reads "
                         f"{', '.join(map(str, READABLE_SCHEMAS))}")
    try:
        return from_dict(CellRecord, _upgrade(data))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: malformed cell record ({e})") from e


def _renamed(d: dict[str, Any] | None, names: dict[str, str]) -> dict[str, Any] | None:
    return None if d is None else {names.get(k, k): v for k, v in d.items()}


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A version 1 record in the current schema (fields added since then keep their defaults)."""
    if data.get("schema_version") != 1:
        return data
    data = dict(data)
    old = dict(data.get("runtime") or {})
    fmt = old.pop("format", {}) or {}
    data["runtime"] = {"device": "unknown", "compute_dtype": str(old.pop("compute_dtype", "unknown")),
                       "settings": old, "format": fmt} if (old or fmt) else None
    data["speed"] = _renamed(data.get("speed"), {"mean_completion_tokens": "mean_tokens"})
    data["fidelity"] = _renamed(data.get("fidelity"), {"reference": "baseline", "ref_ppl": "baseline_ppl"})
    results = []
    for r in data.get("results") or []:
        r = dict(r)
        first, more = r.pop("judgment", None), r.pop("judge_repeats", None) or []
        r["judgments"] = [first, *more] if first else []
        r["generation"] = _renamed(r["generation"], {"peak_memory_mb": "peak_rss_mb"})
        results.append(r)
    data["results"] = results
    data["schema_version"] = SCHEMA_VERSION
    return data


def write_record(record: CellRecord, job_dir: Path) -> None:
    """A job's `result.json` and `generations.jsonl` (one line per answer, for reading without the runner)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"prompt_id": r.prompt_id, "category": r.category, "repeat": r.repeat, "answer": r.answer,
                         "text": r.generation.text, "finish_reason": r.generation.finish_reason,
                         "completion_tokens": r.generation.completion_tokens, "generation_key": r.generation_key})
             for r in record.results]
    write_text_atomic(job_dir / "generations.jsonl", "".join(line + "\n" for line in lines))
    write_text_atomic(job_dir / "result.json", to_json(record))


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temp file and rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
