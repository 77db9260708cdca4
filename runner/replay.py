"""Replay saved sweeps: re-run them, re-judge their generations, or compare two of them.

python -m runner.replay reproduce SWEEP_DIR [--fresh | --from-cache] [--out DIR]   re-run every cell, compare
python -m runner.replay rejudge SWEEP_DIR judge=NAME [judge.KEY=VALUE ...] [--out DIR]
python -m runner.replay resume SWEEP_DIR      resubmit the missing and failed jobs with the sweep's own launcher
python -m runner.replay compare A B [--out DIR]   two sweeps of one model, build by build: B − A (default out: B)

The matrix and report of a sweep come from `python -m runner.collect SWEEP_DIR`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path

from runner import progress
from runner.analysis.headline import print_summary
from runner.secrets import check_overrides
from runner.sweep import load_sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.replay", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress of the stages")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("reproduce", help="re-run every cell of a saved sweep from its saved configs and compare")
    p.add_argument("sweep_dir", type=Path)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fresh", action="store_true", help="also rebuild the artifacts: a new empty store in OUT/store")
    mode.add_argument("--from-cache", action="store_true",
                      help="replay the generation and fidelity caches: nothing is re-run")
    p.add_argument("--out", type=Path, help="new sweep dir (default: SWEEP_DIR-reproduce-<time> beside it)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p = sub.add_parser("rejudge", help="score saved generations with another judge or rubric")
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("overrides", nargs="+", metavar="judge=NAME|judge.KEY=VALUE")
    p.add_argument("--out", type=Path, help="default: SWEEP_DIR/rejudge-<judge name>")
    p = sub.add_parser("resume", help="resubmit the jobs that are missing or failed, with the sweep's own launcher")
    p.add_argument("sweep_dir", type=Path)
    p = sub.add_parser("compare", help="compare two saved sweeps of one model build by build (B − A)")
    p.add_argument("a", type=Path, metavar="A")
    p.add_argument("b", type=Path, metavar="B")
    p.add_argument("--out", type=Path, help="where compare.csv/.md/.html go (default: B)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        if args.command == "rejudge":
            from runner.rejudge import rejudge

            check_overrides(args.overrides)  # before anything is read or written
            out, df = rejudge(load_sweep(args.sweep_dir), args.overrides, args.out)
            print_summary(df, out, progress.console(), load_sweep(out).baseline())
            return 0
        if args.command == "resume":
            return _resume(load_sweep(args.sweep_dir))
        if args.command == "compare":
            from runner.analysis.compare import run

            return run(load_sweep(args.a), load_sweep(args.b), args.out)
        from runner.reproduce import reproduce

        sweep = load_sweep(args.sweep_dir)
        stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        out = args.out or sweep.dir.with_name(f"{sweep.dir.name}-reproduce-{stamp}")
        diffs = reproduce(sweep, out, fresh=args.fresh, from_cache=args.from_cache, quiet=args.quiet)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for d in diffs:
        print(d.line())
    ok = all(d.reproduced for d in diffs)
    verdict = "reproduced" if ok else "NOT reproduced"
    how = " from the caches, nothing re-run" if args.from_cache else ""
    print(f"{verdict}{how}: {len(diffs)} cells → {out} (comparison in {out / 'reproduce.md'})")
    return 0 if ok else 1


def _resume(sweep) -> int:  # type: ignore[no-untyped-def]
    from runner import callbacks
    from runner.rejudge import judge_deferred
    from runner.resume import resume

    if resume(sweep):
        return 1 if callbacks.FAILED_CELLS or callbacks.END_ERRORS else 0
    print(f"nothing to resume: every job of {sweep.dir} finished (ok or skipped)")
    if judge_deferred(sweep):  # a detached sweep's end-of-sweep judging (judge.where=end)
        from runner.analysis.collect import collect

        print_summary(collect(sweep.dir), sweep.dir, progress.console(), load_sweep(sweep.dir).baseline())
    return 0


if __name__ == "__main__":
    sys.exit(main())
