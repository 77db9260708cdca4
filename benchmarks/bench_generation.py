"""Runner generation throughput vs the bare engines (same model file, prompt ids, greedy sampler, token count).

python benchmarks/bench_generation.py [--tokens 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


from runner.backends import base, get_backend
from runner.cell import load_option as group
from runner.contract import ChatRenderer
from runner.model_source import resolve_model
from runner.records import SamplerParams
from runner.store import Store


def bare_llama(path: str, ids: list[int], n: int, fmt: dict) -> float:
    from llama_cpp import Llama

    from runner.backends.gguf import model_params, default_threads

    threads, threads_batch = default_threads(fmt)
    with model_params(False):
        llm = Llama(model_path=path, n_ctx=4096, n_threads=threads, n_threads_batch=threads_batch, verbose=False)
    t_first = time.perf_counter()
    for i, _ in enumerate(llm.generate(ids, top_k=0, top_p=1.0, min_p=0.0, temp=0.0)):
        if i == 0:
            t_first = time.perf_counter()
        if i + 1 >= n:
            break
    tps = (n - 1) / (time.perf_counter() - t_first)
    llm.close()
    return tps


def bare_mlx(path: str, ids: list[int], n: int) -> float:
    import mlx.core as mx
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler
    from mlx_lm.utils import load

    model, tokenizer = load(path)
    model.set_dtype(mx.float32)
    *_, last = stream_generate(model, tokenizer, ids, max_tokens=n, sampler=make_sampler(temp=0.0))
    return last.generation_tps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    store = Store(Path(tempfile.mkdtemp()) / "store")
    model_dir, source = resolve_model(group("model", "tiny"), store)
    renderer = ChatRenderer(model_dir, enable_thinking=False)
    ids = renderer.render("Explain how a hash map handles collisions.").token_ids
    sampler = SamplerParams(0.0, 1.0, 0, 0.0, 1.0, args.tokens, 0)
    for fmt, precision in (("gguf", "q4_k_m"), ("mlx", "4bit")):
        backend, fmt_cfg = get_backend(fmt), group("format", fmt)
        art = backend.prepare(model_dir, source, group("precision", precision), fmt_cfg, store)
        runner_tps, bare_tps = [], []
        for _ in range(args.repeats):
            with backend.load(art, fmt_cfg) as session:
                gen = base.generate(session, ids, sampler, stop_ids=[])  # no stop: exactly N tokens each
            runner_tps.append(gen.gen_tps)
            bare_tps.append(bare_llama(art.path, ids, args.tokens, fmt_cfg) if fmt == "gguf"
                            else bare_mlx(art.path, ids, args.tokens))
        r, b = statistics.median(runner_tps), statistics.median(bare_tps)
        print(f"{fmt:4s} {precision:7s} runner {r:8.1f} tok/s   bare {b:8.1f} tok/s   ratio {r / b:.3f}")


if __name__ == "__main__":
    main()
