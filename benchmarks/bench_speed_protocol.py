"""speed=bench vs the engines' own benchmark tools, same build, same threads (not part of the test suite).

python benchmarks/bench_speed_protocol.py [--model tiny|gemma3_270m] [--threads T] [--rounds N]
                                          [--gguf q4_k_m] [--mlx 4bit] [--pp 512] [--tg 128] [--r 5]

* llama.cpp: the runner's bench (`backends/base.bench` through `GGUFSession.bench_prefill/bench_decode`, with
  format.n_threads = n_threads_batch = T) against `llama-bench -m X.gguf -p PP -n TG -r R -t T -o json`, the
  llama-bench built from the bindings' own llama.cpp (`runner.backends.llama_tools`). Two llama-bench runs: with
  the session's settings (`-fa 0 --repack 0`: llama-cpp-python's `flash_attn=False`, the runner's
  `extra_bufts: false`) -- the like-for-like ratio -- and llama-bench's defaults (flash attention auto, repack on)
  for reference.
* MLX: the runner's bench (`MLXSession`) against `mlx_lm.benchmark` (its `main()`, in this process, `--model` the
  build's folder, `-p PP -g TG -n R`), its model cast to the compute dtype the runner uses (float32 on the CPU:
  mlx_lm.benchmark would run float16 weights as they are, 15-40x slower there). mlx_lm.benchmark times differently:
  tg continues after the prompt (depth PP..PP+TG, not from an empty context) with greedy sampling, and its
  generation_tps counts TG tokens over the time after the first one (TG-1 steps): expect its tg a few % off.

Each round runs ours, then theirs, alternately (drift hits both); the table gives every round and the median
ratio ours / theirs. The machine's load average is printed before and after each measurement: on a busy machine
the CVs are high and the ratios noisy -- say so when quoting them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the runner's cells (llama-bench inherits it)

from runner.backends import base, get_backend, text_codec  # noqa: E402
from runner.cell import load_option as group  # noqa: E402
from runner.contract import ChatRenderer  # noqa: E402
from runner.model_source import resolve_model  # noqa: E402
from runner.speed import speed_bench  # noqa: E402
from runner.stages.bench import bench_ids  # noqa: E402
from runner.store import Store  # noqa: E402


def load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def ours(backend: Any, art: Any, fmt_cfg: dict[str, Any], ids: Any, pp: int, tg: int) -> dict[str, Any]:
    with backend.load(art, fmt_cfg) as session:
        t = base.bench(session, ids)
    b = speed_bench(pp, tg, 0, t.pp_s, t.tg_s, t.pp_context, t.tg_context)
    return {"pp": b.pp_tps, "pp_sd": b.pp_sd, "pp_cv": b.pp_cv, "tg": b.tg_tps, "tg_sd": b.tg_sd, "tg_cv": b.tg_cv}


def llama_bench(exe: Path, gguf: str, pp: int, tg: int, r: int, threads: int, matched: bool) -> dict[str, Any]:
    cmd = [str(exe), "-m", gguf, "-p", str(pp), "-n", str(tg), "-r", str(r), "-t", str(threads), "-o", "json"]
    if matched:
        cmd += ["-fa", "0", "--repack", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    out: dict[str, Any] = {"cmd": " ".join(cmd[1:]).replace(gguf, "X.gguf")}
    for test in json.loads(proc.stdout):
        name = "pp" if test["n_prompt"] else "tg"
        mean, sd = test["avg_ts"], test["stddev_ts"]
        out.update({name: mean, f"{name}_sd": sd, f"{name}_cv": 100 * sd / mean})
    return out


def mlx_lm_benchmark(folder: str, compute_dtype: str, pp: int, tg: int, r: int) -> dict[str, Any]:
    import mlx.core as mx
    import mlx_lm.benchmark as mb

    original = mb.load

    def load_cast(*args: Any, **kwargs: Any) -> Any:  # the runner's compute dtype, as MLXSession casts it
        model, *rest = original(*args, **kwargs)
        model.set_dtype(getattr(mx, compute_dtype))
        return (model, *rest)

    argv = sys.argv
    sys.argv = ["mlx_lm.benchmark", "--model", folder, "-p", str(pp), "-g", str(tg), "-n", str(r)]
    buf = io.StringIO()
    mb.load = load_cast
    try:
        with contextlib.redirect_stdout(buf):
            mb.main()
    finally:
        mb.load, sys.argv = original, argv
    trials = re.findall(r"Trial \d+:\s+prompt_tps=([\d.]+), generation_tps=([\d.]+)", buf.getvalue())
    out: dict[str, Any] = {"cmd": f"python -m mlx_lm.benchmark --model FOLDER -p {pp} -g {tg} -n {r} "
                                  f"(model cast to {compute_dtype})"}
    for name, col in (("pp", 0), ("tg", 1)):
        rates = [float(t[col]) for t in trials]
        mean, sd = statistics.fmean(rates), statistics.stdev(rates) if len(rates) > 1 else float("nan")
        out.update({name: mean, f"{name}_sd": sd, f"{name}_cv": 100 * sd / mean})
    return out


def fmt(m: dict[str, Any], name: str) -> str:
    return f"{m[name]:9.1f} ± {m[name + '_sd']:7.1f} (CV {m[name + '_cv']:4.1f} %)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--gguf", default="q4_k_m", help="GGUF precision")
    ap.add_argument("--mlx", default="4bit", help="MLX precision")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (prompt and generation)")
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--r", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--store", default=None, help="a store to reuse (default: a fresh one)")
    ap.add_argument("--skip", choices=["gguf", "mlx"], action="append", default=[])
    ap.add_argument("--json", default=None, help="write every measurement here")
    args = ap.parse_args()

    from runner.backends import llama_tools

    store = Store(args.store or Path(tempfile.mkdtemp()) / "store")
    model_dir, source = resolve_model(group("model", args.model), store)
    renderer = ChatRenderer(model_dir, enable_thinking=False, chat=False, codec=text_codec(source))  # ids only
    ids = bench_ids(renderer, model_dir, {"pp": args.pp, "tg": args.tg, "r": args.r, "seed": 0})
    print(f"model {args.model}; pp{args.pp} tg{args.tg} r={args.r}; {os.cpu_count()} cores; "
          f"load average {load()}; bench ids sha {ids.sha[:12]}")
    rows: list[dict[str, Any]] = []
    for fmt_name, precision in (("gguf", args.gguf), ("mlx", args.mlx)):
        if fmt_name in args.skip:
            continue
        backend = get_backend(fmt_name)
        fmt_cfg = group("format", fmt_name)
        if fmt_name == "gguf":
            fmt_cfg = {**fmt_cfg, "n_threads": args.threads, "n_threads_batch": args.threads}
        art = backend.prepare(model_dir, source, group("precision", precision), fmt_cfg, store)
        runtime = backend.runtime(fmt_cfg, art)
        exe = llama_tools.tools(store).bench if fmt_name == "gguf" else None
        for rnd in range(args.rounds):
            before = load()
            mine = ours(backend, art, fmt_cfg, ids, args.pp, args.tg)
            if fmt_name == "gguf":
                others = {"llama-bench (same settings)": llama_bench(exe, art.path, args.pp, args.tg, args.r,
                                                                     args.threads, matched=True),
                          "llama-bench (defaults)": llama_bench(exe, art.path, args.pp, args.tg, args.r,
                                                                args.threads, matched=False)}
            else:
                others = {"mlx_lm.benchmark": mlx_lm_benchmark(art.path, runtime.compute_dtype, args.pp, args.tg,
                                                               args.r)}
            after = load()
            for tool, theirs in others.items():
                row = {"format": fmt_name, "precision": precision, "round": rnd, "tool": tool, "ours": mine,
                       "theirs": theirs, "load_before": before, "load_after": after,
                       "ratio_pp": mine["pp"] / theirs["pp"], "ratio_tg": mine["tg"] / theirs["tg"]}
                rows.append(row)
                print(f"{fmt_name} {precision} round {rnd}  load {before} -> {after}\n"
                      f"  ours        pp {fmt(mine, 'pp')}  tg {fmt(mine, 'tg')}\n"
                      f"  {tool:<27} pp {fmt(theirs, 'pp')}  tg {fmt(theirs, 'tg')}\n"
                      f"  ratio ours/theirs  pp {row['ratio_pp']:.3f}  tg {row['ratio_tg']:.3f}   [{theirs['cmd']}]",
                      flush=True)
    print("\nmedian ratios ours / theirs (goal >= 0.97; CV < 5 % on an idle machine):")
    for key in sorted({(r["format"], r["precision"], r["tool"]) for r in rows}):
        sel = [r for r in rows if (r["format"], r["precision"], r["tool"]) == key]
        pp, tg = statistics.median(r["ratio_pp"] for r in sel), statistics.median(r["ratio_tg"] for r in sel)
        cv = max(max(r["ours"]["pp_cv"], r["ours"]["tg_cv"]) for r in sel)
        print(f"  {key[0]} {key[1]:8s} vs {key[2]:<27} pp {pp:.3f}  tg {tg:.3f}   (ours' largest CV {cv:.1f} %)")
    print(f"load average at the end {load()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
