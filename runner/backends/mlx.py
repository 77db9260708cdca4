"""MLX backend: `mlx_lm.convert` to build, `generate_step` to decode, a forward pass for log-probs."""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from runner.backends import mlx_methods
from runner.backends.base import artifact_info, compare_prompt_ids, log_softmax, safetensors_data_bytes
from runner.model_source import content_hash, safetensors_header
from runner.records import ArtifactInfo, ModelSourceInfo, RuntimeInfo, SamplerParams
from runner.store import Store

REPETITION_CONTEXT = 64  # same window as the GGUF backend
PREFILL_STEP = 2048  # speed=bench prompt steps: mlx_lm's `prefill_step_size` default (generate_step, mlx_lm.benchmark)
SAFETENSORS_FLOATS = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def tool_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"mlx": version("mlx"), "mlx-lm": version("mlx-lm")}


@functools.cache
def engine() -> dict[str, str]:
    """What computes an MLX cell (cache keys and records): mlx, mlx-lm and mlx's platform library, if any."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"name": "mlx", "mlx": version("mlx"), "mlx-lm": version("mlx-lm")}
    for lib in ("mlx-cpu", "mlx-cuda", "mlx-metal"):  # the compiled libmlx on Linux (mlx[cpu], mlx[cuda])
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            pass
    return out


@functools.cache
def cpu_threads() -> int:
    """The threads MLX computes with on the CPU, measured: mlx sets none and takes no setting (its Linux
    CPU build runs one compute stream over a reference BLAS: 1; Accelerate on macOS uses several)."""
    import time

    import mlx.core as mx

    a = mx.random.normal((384, 384), key=mx.random.key(0), stream=mx.cpu)
    mx.eval(a)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - wall0 < 0.05:
        mx.eval(mx.matmul(a, a, stream=mx.cpu))
    return max(1, round((time.process_time() - cpu0) / (time.perf_counter() - wall0)))


def device() -> str:
    """MLX's default device: cpu, or its GPU backend (metal on macOS, cuda on Linux)."""
    import mlx.core as mx

    if mx.default_device() == mx.cpu:
        return "cpu"
    return "metal" if sys.platform == "darwin" else "cuda"


def weights_dtype(model_dir: Path) -> str:
    """The floating dtype most tensors of a converted model are stored in (scales and biases, if quantized)."""
    counts: dict[str, int] = {}
    for path in model_dir.glob("*.safetensors"):
        for k, t in safetensors_header(path)[1].items():
            if k != "__metadata__" and t["dtype"] in SAFETENSORS_FLOATS:
                counts[t["dtype"]] = counts.get(t["dtype"], 0) + 1
    return SAFETENSORS_FLOATS[max(counts, key=counts.get)] if counts else "unknown"


def resolve_compute_dtype(requested: str, dev: str, model_dir: Path) -> str:
    """`auto`: float32 on CPU (float16 scales run 15-40x slower there), the weights' dtype on a GPU."""
    if requested == "auto":
        requested = "float32" if dev == "cpu" else "model"
    return weights_dtype(model_dir) if requested == "model" else requested


class MLXSession:
    def __init__(self, path: Path, compute_dtype: str):
        import mlx.core as mx
        from mlx_lm.utils import load_model

        self.mx = mx
        self.model, _ = load_model(path)
        if compute_dtype != weights_dtype(path):
            self.model.set_dtype(getattr(mx, compute_dtype))
        self.compute_dtype = compute_dtype

    def __enter__(self) -> "MLXSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.model
        gc.collect()
        self.mx.clear_cache()

    def stream(self, prompt_ids: list[int], sampler: SamplerParams) -> Iterator[int]:
        from mlx_lm.generate import generate_step
        from mlx_lm.sample_utils import make_logits_processors

        mx = self.mx
        mx.random.seed(sampler.seed)
        processors = None
        if sampler.repetition_penalty != 1.0:
            processors = make_logits_processors(repetition_penalty=sampler.repetition_penalty,
                                                repetition_context_size=REPETITION_CONTEXT)
        for token, _ in generate_step(mx.array(prompt_ids), self.model, max_tokens=sampler.max_tokens,
                                      sampler=sampling_chain(sampler), logits_processors=processors):
            yield token

    prefill_batch = PREFILL_STEP

    def bench_prefill(self, token_ids: list[int]) -> Callable[[], int]:
        """speed=bench pp, as mlx_lm's `generate_step` evaluates a prompt (mlx_lm/generate.py, the prefill loop):
        all ids but the last in steps of `prefill_step_size`, the KV cache evaluated after each, then the last id
        with its logits evaluated; no sampling. The same work as llama.cpp's batches (no output rows but the last)."""
        from mlx_lm.generate import generation_stream
        from mlx_lm.models.cache import make_prompt_cache

        mx, model = self.mx, self.model
        cache = make_prompt_cache(model)
        ids = mx.array(token_ids)
        steps = [ids[i:min(i + PREFILL_STEP, len(token_ids) - 1)] for i in range(0, len(token_ids) - 1, PREFILL_STEP)]
        last = ids[-1:]
        mx.eval(steps, last)

        def run() -> int:
            with mx.stream(generation_stream):
                for step in steps:
                    model(step[None], cache=cache)
                    mx.eval([c.state for c in cache])
                mx.eval(model(last[None], cache=cache)[:, -1, :])
            return int(cache[0].offset)

        return run

    def bench_decode(self, token_ids: list[int]) -> Callable[[], int]:
        """speed=bench tg: one id per model call from an empty KV cache, each call's logits evaluated, the next id
        the given one (never sampled). Pipelined as mlx_lm's `generate_step` is (`mx.async_eval` of step i+1's
        logits before waiting for step i's): how MLX generates, the Python graph building overlapped."""
        from mlx_lm.generate import generation_stream
        from mlx_lm.models.cache import make_prompt_cache

        mx, model = self.mx, self.model
        cache = make_prompt_cache(model)
        inputs = [mx.array([[t]]) for t in token_ids]
        mx.eval(inputs)

        def run() -> int:
            with mx.stream(generation_stream):
                pending = None
                for x in inputs:
                    logits = model(x, cache=cache)[:, -1, :]
                    mx.async_eval(logits)
                    if pending is not None:
                        mx.eval(pending)
                    pending = logits
                mx.eval(pending)
            return int(cache[0].offset)

        return run

    def logprobs(self, token_ids: list[int]) -> np.ndarray:
        mx = self.mx
        logits = self.model(mx.array([token_ids]))[0].astype(mx.float32)
        mx.eval(logits)
        return log_softmax(np.array(logits, copy=False))


def sampling_chain(s: SamplerParams) -> Callable[[Any], Any]:
    """llama.cpp's filter order (top_k → top_p → min_p, then temperature), so both engines sample alike.

    mlx_lm's `make_sampler` applies top_p before top_k, which keeps a different candidate set.
    """
    from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, categorical_sampling, make_sampler

    if s.temperature == 0:
        return make_sampler(temp=0.0)  # greedy

    def sample(logprobs: Any) -> Any:
        if 0 < s.top_k < logprobs.shape[-1]:
            logprobs = apply_top_k(logprobs, s.top_k)
        if 0 < s.top_p < 1:
            logprobs = apply_top_p(logprobs, s.top_p)
        if s.min_p > 0:
            logprobs = apply_min_p(logprobs, s.min_p)
        return categorical_sampling(logprobs, s.temperature)

    return sample


class MLXBackend:
    name = "mlx"

    def runtime(self, format_cfg: dict[str, Any], artifact: ArtifactInfo) -> RuntimeInfo:
        dev = device()
        dtype = resolve_compute_dtype(str(format_cfg.get("compute_dtype", "auto")), dev, Path(artifact.path))
        return RuntimeInfo(device=dev, compute_dtype=dtype, format=dict(format_cfg), engine=engine(),
                           cpu_threads=cpu_threads() if dev == "cpu" else None)

    def prepare(self, source_dir: Path, source: ModelSourceInfo, precision: dict[str, Any],
                format_cfg: dict[str, Any], store: Store, method: dict[str, Any] | None = None,
                calibration: Any = None) -> ArtifactInfo:
        if precision.get("prebuilt"):
            return self._prebuilt(Path(precision["path"]), source, store)
        tokenizer_dir, source_dir = source_dir, quantization_source(source_dir, source, store)
        params = dict(precision.get("mlx") or {})
        if params.get("dtype") not in (None, *mlx_methods.CONVERSION_DTYPES):  # mlx_lm.convert would ignore it
            raise ValueError(f"precision.mlx.dtype must be one of {', '.join(mlx_methods.CONVERSION_DTYPES)}, "
                             f"got {params['dtype']!r} (conf/precision/{precision.get('name')}.yaml)")
        versions = tool_versions()
        if str((method or {}).get("name", "none")) in mlx_methods.METHODS:
            payload, build = self._calibrated(source_dir, tokenizer_dir, source, precision, params, versions,
                                              format_cfg, method, calibration)
        else:
            payload, build = self._plain(source_dir, source, params, versions)
        entry = store.get_or_build("mlx", payload, build)
        return artifact_info(entry, entry.path / "model", source)

    @staticmethod
    def _plain(source_dir: Path, source: ModelSourceInfo, params: dict[str, Any],
               versions: dict[str, str]) -> tuple[dict[str, Any], Callable[[Path], dict[str, Any]]]:
        """mlx_lm.convert with the precision's bits, group size, mode, dtype or mixed recipe: its key and build."""
        payload = {"source": source.content_hash, "params": params, "tool_versions": versions}

        def build(tmp: Path) -> dict[str, Any]:
            from mlx_lm import convert

            out = tmp / "model"
            recipe = params.get("recipe")
            bits = params.get("bits")
            with contextlib.redirect_stdout(io.StringIO()):  # convert prints progress
                convert(str(source_dir), mlx_path=str(out), quantize=bool(bits or recipe),
                        q_group_size=params.get("group_size"), q_bits=bits, q_mode=params.get("mode", "affine"),
                        dtype=params.get("dtype"), quant_predicate=recipe)
            return {"tool_versions": versions, "warnings": _quantization_warnings(out, bits or recipe),
                    "tensor_bytes": _tensor_bytes(out)}

        return payload, build

    @staticmethod
    def _calibrated(source_dir: Path, tokenizer_dir: Path, source: ModelSourceInfo, precision: dict[str, Any],
                    params: dict[str, Any], versions: dict[str, str], format_cfg: dict[str, Any],
                    method: dict[str, Any], calibration: Any,
                    ) -> tuple[dict[str, Any], Callable[[Path], dict[str, Any]]]:
        """mlx-lm's AWQ / GPTQ / DWQ / dynamic quantization on the calibration text (runner/backends/mlx_methods.py):
        its key and build.

        The key holds the plain build's (source, precision params, tool versions) plus the method, its parameters,
        the calibration text's sha256 and the dtype the method computes in.
        """
        name = str(method["name"])
        if calibration is None:
            raise ValueError(f"method={name} needs calibration data (calibration=default, file or dataset)")
        if reason := mlx_methods.unsupported(method, precision):
            raise ValueError(reason)
        settings = mlx_methods.settings(method)
        compute = mlx_methods.compute_dtype(format_cfg, device())
        keyed = {**params, "method": name, name: settings, "calibration": calibration.sha256, "compute_dtype": compute}
        payload = {"source": source.content_hash, "params": keyed, "tool_versions": versions,
                   "method_code": mlx_methods.CODE_VERSION}

        def build(tmp: Path) -> dict[str, Any]:
            from runner.backends import text_codec
            from runner.contract import ChatRenderer

            out = tmp / "model"
            codec = text_codec(source)  # the tokenizer of record (a GGUF source's own)
            try:
                renderer = ChatRenderer(tokenizer_dir, None, chat=False, codec=codec)
                renderer.tokenizer.model_max_length = 1 << 62  # the text is cut into samples: no length warning
                built = mlx_methods.build(name, settings, precision, source_dir, renderer.encode, renderer.bos_id(),
                                          Path(calibration.path).read_text(encoding="utf-8"), out, compute)
            finally:
                if codec is not None:
                    codec.close()
            return {"tool_versions": versions, "method": built.details,
                    "calibration": {"name": calibration.name, **calibration.spec},
                    "warnings": _quantization_warnings(out, True) + built.warnings,
                    "tensor_bytes": _tensor_bytes(out)}

        return payload, build

    def _prebuilt(self, folder: Path, source: ModelSourceInfo, store: Store) -> ArtifactInfo:
        """A published MLX model folder evaluated as it is: registered in the store by its content, never copied."""
        weights = sorted(folder.glob("*.safetensors"))
        if not (folder / "config.json").is_file() or not weights:
            raise ValueError(f"artifact.path {folder}: not an MLX model folder (config.json and *.safetensors)")
        entry = store.get_or_build("prebuilt", {"mlx": content_hash(folder, store)},
                                   lambda tmp: {"dir": str(folder),
                                                "tensor_bytes": sum(safetensors_data_bytes(p) for p in weights)})
        return artifact_info(entry, Path(entry.manifest["dir"]), source)

    def check_prompt_ids(self, artifact: ArtifactInfo, rendered: dict[str, Any]) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(artifact.path)
        compare_prompt_ids(rendered, lambda text: list(tokenizer.encode(text, add_special_tokens=False)),
                           tokenizer.bos_token_id, artifact.path)

    def load(self, artifact: ArtifactInfo, format_cfg: dict[str, Any]) -> MLXSession:
        return MLXSession(Path(artifact.path), self.runtime(format_cfg, artifact).compute_dtype)


def quantization_source(source_dir: Path, source: ModelSourceInfo, store: Store) -> Path:
    """The Hugging Face folder MLX quantizes: the model's own, or a GGUF source's dequantized weights (in the store)."""
    if not source.gguf_path:
        return source_dir
    from runner.backends.gguf_source import weights_folder

    return weights_folder(source, store)


def _tensor_bytes(model_dir: Path) -> int:
    return sum(safetensors_data_bytes(p) for p in model_dir.glob("*.safetensors"))


def _quantization_warnings(model_dir: Path, quantized: Any) -> list[str]:
    """mlx_lm silently skips layers whose input dim is not divisible by the group size: report them."""
    if not quantized:
        return []
    dense = []
    for path in sorted(model_dir.glob("*.safetensors")):
        _, header = safetensors_header(path)
        dense += [k for k, t in header.items()
                  if k.endswith(".weight") and len(t.get("shape", [])) == 2 and t["dtype"] in ("F16", "BF16", "F32")]
    return [f"mlx left {len(dense)} matrices unquantized: {', '.join(dense[:5])}"] if dense else []
