"""First-prompt bias with and without the warm-up: TTFT of the first timed prompt vs the median of the rest,
and vs the same first prompt timed again at the end (prompts differ in length; that ratio isolates the bias).

Each measurement is a fresh process that loads the model (fp16 of each engine), optionally warms it up
(runner/backends/base.py: warm_up, as every cell does), then times the seed prompts in order.

python benchmarks/bench_warmup.py [--model tiny|gemma3_270m] [--tokens 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def measure(model: str, fmt: str, warm: bool, tokens: int, store_dir: str) -> list[float]:
    """TTFT of each seed prompt, in order, in this (fresh) process."""
    from runner.backends import base, get_backend, text_codec
    from runner.cell import load_option as group
    from runner.contract import ChatRenderer
    from runner.model_source import resolve_model
    from runner.prompts import load_prompts
    from runner.records import SamplerParams
    from runner.store import Store

    store = Store(store_dir)
    model_cfg = group("model", model)
    model_dir, source = resolve_model(model_cfg, store)
    renderer = ChatRenderer(model_dir, False, chat=model_cfg.get("chat", True), codec=text_codec(source))
    prompts = [renderer.render(p.prompt).token_ids for p in load_prompts(group("prompts", "seed"))]
    backend, fmt_cfg = get_backend(fmt), group("format", fmt)
    artifact = backend.prepare(model_dir, source, group("precision", "fp16"), fmt_cfg, store)
    greedy = SamplerParams(0.0, 1.0, 0, 0.0, 1.0, tokens, 0)
    with backend.load(artifact, fmt_cfg) as session:
        if warm:
            base.warm_up(session, prompts[0])
        return [base.generate(session, ids, greedy, []).ttft_s for ids in [*prompts, prompts[0]]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per engine and mode")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # fmt warm store_dir: a measurement process
    args = parser.parse_args()
    if args.one:
        fmt, warm, store_dir = args.one
        print(json.dumps(measure(args.model, fmt, warm == "1", args.tokens, store_dir)))
        return
    store_dir = tempfile.mkdtemp(prefix="bench-warmup-")
    print(f"model {args.model}, seed prompts, {args.tokens}-token answers, {args.rounds} fresh processes each")
    print(f"{'engine':6s} {'warm-up':8s} {'first TTFT ms':>14s} {'median rest ms':>15s} {'same again ms':>14s} "
          f"{'first/again':>12s}")
    for fmt in ("gguf", "mlx"):
        for warm in ("0", "1"):
            firsts, rests, agains = [], [], []
            for _ in range(args.rounds):
                out = subprocess.run([sys.executable, __file__, "--model", args.model, "--tokens", str(args.tokens),
                                      "--one", fmt, warm, store_dir], capture_output=True, text=True, check=True)
                ttfts = json.loads(out.stdout.strip().splitlines()[-1])
                firsts.append(ttfts[0])
                rests.append(statistics.median(ttfts[1:-1]))
                agains.append(ttfts[-1])
            first, rest, again = (statistics.median(x) for x in (firsts, rests, agains))
            print(f"{fmt:6s} {'yes' if warm == '1' else 'no':8s} {1000 * first:14.2f} {1000 * rest:15.2f} "
                  f"{1000 * again:14.2f} {first / again:11.2f}x")


if __name__ == "__main__":
    main()
