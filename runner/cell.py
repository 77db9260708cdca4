"""A cell of the matrix, built from the composed Hydra config, and its validity check."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from runner import calibration as calibration_data
from runner.identity import build_id, parse_build_id
from runner.locks import LOCK_KINDS
from runner.metrics.fidelity import PROTOCOLS  # fidelity.protocol's values: the scoring code's own list
from runner.records import CellIdentity, SamplerParams
from runner.speed import BENCH_DEFAULTS, check_speed_config

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
VERDICT_SIGNALS = ("overall", "check_pass", "pairwise_net")  # the quality signals a verdict is given on
DEFAULT_FIDELITY_TEXT = Path(__file__).resolve().parent / "data" / "fidelity_eval.txt"
log = logging.getLogger(__name__)


def parse_top_k(value: Any) -> int | None:
    """`fidelity.top_k`: a positive integer, or `all` (None: the full vocabulary, exact KLD)."""
    if str(value).lower() == "all":
        return None
    try:
        k = int(value)
    except (TypeError, ValueError):
        k = 0
    if k < 1:
        raise ValueError(f"fidelity.top_k must be a positive integer or all, got {value!r}")
    return k


def fidelity_protocol(fid: dict[str, Any]) -> str:
    """`fidelity.protocol`: runner (every position, top-k + tail) or llamacpp (llama-perplexity's --kl-divergence)."""
    protocol = fid.get("protocol") or "runner"
    if protocol not in PROTOCOLS:
        raise ValueError(f"fidelity.protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return str(protocol)


def fidelity_corpus(fid: dict[str, Any]) -> dict[str, Any]:
    """The eval text's source, with the `calibration` group's keys (runner/calibration.py resolves it): `fidelity.corpus`
    (source default | file | dataset; default: runner/data/fidelity_eval.txt, not the calibration text), where
    `fidelity.text=PATH` is short for `fidelity.corpus.source=file fidelity.corpus.file=PATH`."""
    corpus = dict(fid.get("corpus") or {})
    corpus.setdefault("source", "default")
    text = fid.get("text")
    if text:
        if corpus["source"] == "dataset" or (corpus.get("file") and str(corpus["file"]) != str(text)):
            raise ValueError(f"fidelity.text={text} and fidelity.corpus (source={corpus['source']}, "
                             f"file={corpus.get('file')}) both name the eval text: set one")
        corpus.update(source="file", file=str(text))
    return corpus


def check_fidelity_config(fid: dict[str, Any]) -> None:
    """What the fidelity config alone decides (the text's length needs its tokenizer: checked in the cell)."""
    protocol = fidelity_protocol(fid)
    parse_top_k(fid.get("top_k", 256))
    chunk_len, tokens = fid.get("chunk_len"), fid.get("tokens")
    if not isinstance(chunk_len, int) or chunk_len < 2:
        raise ValueError(f"fidelity.chunk_len must be an integer >= 2, got {chunk_len!r}")
    if protocol == "llamacpp" and chunk_len < 3:
        raise ValueError(f"fidelity.chunk_len must be >= 3 with fidelity.protocol=llamacpp (it scores the second half "
                         f"of each chunk), got {chunk_len}")
    if not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"fidelity.tokens must be an integer >= 0 (0: the whole text), got {tokens!r}")
    if 0 < tokens < chunk_len:
        raise ValueError(f"fidelity.tokens={tokens} is shorter than one chunk (fidelity.chunk_len={chunk_len}): "
                         f"set fidelity.tokens >= {chunk_len}, or 0 for the whole text")
    text = fid.get("text")
    if text and not Path(text).expanduser().is_file():
        raise FileNotFoundError(f"fidelity.text: file not found: {Path(text).expanduser()}")
    corpus = fidelity_corpus(fid)
    calibration_data.check(corpus, "fidelity.corpus")
    if corpus["source"] in ("none", "default", "file") and not Path(corpus.get("file") or DEFAULT_FIDELITY_TEXT).is_file():
        raise FileNotFoundError(f"fidelity text not found: {DEFAULT_FIDELITY_TEXT}")


def load_option(group: str, option: str, resolve: bool = True) -> dict[str, Any]:
    """A config group option as a plain dict (`conf/GROUP/OPTION.yaml`); one clear error when it is missing.

    `resolve=False` keeps `${oc.env:...}` interpolations, for configs that will be saved.
    """
    path = CONF_DIR / group / f"{option}.yaml"
    if not path.is_file():
        options = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise ValueError(f"{group}={option}: no config {path} (options: {options})")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=resolve)


@dataclass
class Cell:
    identity: CellIdentity
    model: dict[str, Any]
    format: dict[str, Any]
    precision: dict[str, Any]
    generation: dict[str, Any]
    prompts: dict[str, Any]
    judge: dict[str, Any]
    fidelity: dict[str, Any]
    seed: int
    repeats: int
    store_dir: str
    baseline: str
    store_lock: str = "file"
    store_lease_s: float = 60.0
    artifact_path: str | None = None  # precision=prebuilt: artifact.path
    duplicate_of: str | None = None  # a non-prebuilt cell repeated by an artifact.path sweep: the value it runs with
    margins: dict[str, float] = field(default_factory=dict)  # verdict.margins
    method: dict[str, Any] = field(default_factory=lambda: {"name": "none", "formats": [], "calibrated": False})
    calibration: dict[str, Any] = field(default_factory=lambda: {"name": "none", "source": "none"})
    duplicate_calibration: str | None = None  # an uncalibrated cell repeated by a calibration sweep: the first value
    speed: dict[str, Any] = field(default_factory=lambda: dict(BENCH_DEFAULTS))  # the `speed` group (answers | bench)

    @classmethod
    def from_config(cls, cfg: DictConfig, overrides: list[str] | None = None, job_num: int | None = None) -> "Cell":
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        plain = {k: v for k, v in plain.items() if k != "hydra"}
        artifact = (plain.get("artifact") or {}).get("path") if plain["precision"].get("prebuilt") else None
        artifact = str(Path(str(artifact)).expanduser().resolve()) if artifact else None
        method = plain.get("method") or {"name": "none", "formats": ["gguf", "mlx"], "calibrated": False}
        calibration = plain.get("calibration") or {"name": "none", "source": "none"}
        ident = CellIdentity(
            model=plain["model"]["name"], format=plain["format"]["name"], precision=plain["precision"]["name"],
            generation=plain["generation"]["name"], prompts=plain["prompts"]["name"], judge=plain["judge"]["name"],
            overrides=list(overrides or []), job_num=job_num, artifact=artifact, method=str(method["name"]),
            calibration=calibration_data.resolved_name(method, calibration),
        )
        return cls(ident, plain["model"], plain["format"], plain["precision"], plain["generation"], plain["prompts"],
                   plain["judge"], plain.get("fidelity") or {"enabled": False}, int(plain["seed"]),
                   int(plain["repeats"]), str(Path(plain["store_dir"]).resolve()), str(plain["baseline"]),
                   str(plain.get("store_lock", "file")), float(plain.get("store_lease_s", 60.0)), artifact,
                   margins=dict((plain.get("verdict") or {}).get("margins") or {}), method=method,
                   calibration=calibration, speed={**BENCH_DEFAULTS, **(plain.get("speed") or {})})

    def invalid_reason(self) -> str | None:
        """Why this format × precision pair cannot run (a skip, not an error), or None."""
        formats = self.precision.get("formats") or []
        if self.format["name"] not in formats:
            return (f"precision {self.precision['name']!r} does not apply to format {self.format['name']!r} "
                    f"(it applies to: {', '.join(formats)})")
        if self.duplicate_of is not None:
            return (f"the same cell as with artifact.path={self.duplicate_of}: artifact.path applies to "
                    "precision=prebuilt only")
        if reason := self._method_reason():
            return reason
        if self.artifact_path and Path(self.artifact_path).exists():
            kind = "gguf" if Path(self.artifact_path).is_file() else "mlx"
            if kind != self.format["name"]:
                what = "a GGUF file" if kind == "gguf" else "a folder (an MLX model)"
                return f"artifact.path {self.artifact_path} is {what}: it runs as format={kind}"
        return None

    def _method_reason(self) -> str | None:
        """Why this method cannot make this build (a skip), or None."""
        method, fmt = self.method, self.format["name"]
        name = str(method.get("name", "none"))
        if fmt not in (method.get("formats") or [fmt]):
            return (f"method {name!r} does not apply to format {fmt!r} "
                    f"(it applies to: {', '.join(method.get('formats') or [])})")
        gguf = self.precision.get("gguf") or {}
        if fmt == "gguf" and gguf.get("requires_imatrix") and name != "imatrix":
            return f"{str(gguf.get('ftype')).upper()} requires an imatrix: add method=imatrix"
        if method.get("calibrated") and self.precision.get("prebuilt"):
            return f"method {name!r} builds a quantization: a prebuilt artifact is evaluated as it is (use method=none)"
        if method.get("calibrated") and not self._quantizes():
            return (f"method {name!r} calibrates a quantization: precision {self.precision['name']!r} keeps the "
                    "weights in floating point (the same build as method=none)")
        if fmt == "mlx":  # what mlx-lm's AWQ / GPTQ / DWQ / dynamic cannot make (a mode, a mixed recipe, bits)
            from runner.backends.mlx_methods import unsupported

            if reason := unsupported(method, self.precision):
                return reason
        if self.duplicate_calibration is not None:
            return (f"the same cell as with calibration={self.duplicate_calibration}: method {name!r} uses no "
                    "calibration data")
        return None

    def _quantizes(self) -> bool:
        """Whether this precision quantizes (F16/BF16/F32 GGUF and float MLX builds do not)."""
        ftype = str((self.precision.get("gguf") or {}).get("ftype", "")).upper()
        mlx = self.precision.get("mlx") or {}
        return (self.format["name"] == "gguf" and ftype not in ("F16", "BF16", "F32")) or \
            (self.format["name"] == "mlx" and bool(mlx.get("bits") or mlx.get("recipe") or mlx.get("mode")))

    def build(self) -> str:
        """This cell's build id (`gguf_q4_k_m`, `gguf_q4_k_m+imatrix`)."""
        return build_id(self.format["name"], self.precision["name"], str(self.method.get("name", "none")))

    def precision_config(self) -> dict[str, Any]:
        """The precision group as the backend reads it; a prebuilt one carries its artifact's path."""
        return {**self.precision, "path": self.artifact_path} if self.precision.get("prebuilt") else self.precision

    def build_configs(self, build: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """(format, precision, method) configs of a FORMAT_PRECISION[+METHOD] build such as the baseline `gguf_fp16`.

        This cell's own group configs are used where they match (so overrides apply), else the YAML files.
        """
        fmt, precision, method = parse_build_id(build)
        try:
            fmt_cfg = self.format if self.format.get("name") == fmt else load_option("format", fmt)
            prec_cfg = self.precision if self.precision.get("name") == precision else load_option("precision", precision)
            method_cfg = self.method if self.method.get("name") == method else load_option("method", method)
        except ValueError as e:
            raise ValueError(f"baseline={build!r}: {e}") from None
        if fmt not in (prec_cfg.get("formats") or []):
            raise ValueError(f"baseline={build!r}: precision {precision!r} does not apply to format {fmt!r}")
        return fmt_cfg, prec_cfg, method_cfg

    def is_build(self, build: str) -> bool:
        return build == self.build()

    def sampler(self, repeat: int = 0) -> SamplerParams:
        g = self.generation
        return SamplerParams(float(g["temperature"]), float(g["top_p"]), int(g["top_k"]), float(g["min_p"]),
                             float(g["repetition_penalty"]), int(g["max_tokens"]), self.seed + repeat)

    def chat(self) -> bool:
        """Chat-template rendering (`generation.chat`; `auto`: the model's own `model.chat`, default true)."""
        value = self.generation.get("chat", "auto")
        if value in (None, "auto"):
            value = self.model.get("chat", True)
        if not isinstance(value, bool):
            raise ValueError(f"generation.chat must be auto, true or false, got {value!r}")
        return value

    def validate(self, warn: bool = True) -> None:
        """User-caused config errors, raised once with the key at fault (`warn`: also log doubtful settings)."""
        g = self.generation
        if int(g["max_tokens"]) <= 0:
            raise ValueError(f"generation.max_tokens must be > 0, got {g['max_tokens']} (conf/generation/{g['name']}.yaml)")
        if not 0.0 <= float(g["temperature"]):
            raise ValueError(f"generation.temperature must be >= 0, got {g['temperature']}")
        if not 0.0 < float(g["top_p"]) <= 1.0:
            raise ValueError(f"generation.top_p must be in (0, 1], got {g['top_p']}")
        if self.store_lock not in LOCK_KINDS:
            raise ValueError(f"store_lock must be one of {', '.join(LOCK_KINDS)}, got {self.store_lock!r}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.precision.get("prebuilt"):
            if not self.artifact_path:
                raise ValueError("precision=prebuilt needs artifact.path= a .gguf file (format=gguf) or an MLX "
                                 "model folder (format=mlx)")
            if not Path(self.artifact_path).exists():
                raise FileNotFoundError(f"artifact.path: no such file or folder: {self.artifact_path}")
        if self.fidelity.get("enabled"):
            check_fidelity_config(self.fidelity)
        if self.method.get("calibrated"):
            calibration_data.check(self.calibration)
        check_speed_config(self.speed, self.format)
        for signal, margin in self.margins.items():
            if signal not in VERDICT_SIGNALS:
                raise ValueError(f"verdict.margins.{signal}: not a quality signal (one of {', '.join(VERDICT_SIGNALS)})")
            if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin > 0:
                raise ValueError(f"verdict.margins.{signal} must be a number > 0, got {margin!r}")
        if warn and self.repeats > 1 and float(g["temperature"]) == 0.0:
            log.warning("repeats=%d with greedy decoding (temperature 0) repeats identical answers; "
                        "use generation=sampled for confidence intervals over seeds", self.repeats)
