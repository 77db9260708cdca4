"""python -m runner.collect SWEEP_DIR [--max-kld X] [--min-top1 Y]: the matrix and report of a sweep or run.

Built from the records alone: no engine is imported, so a sweep dir copied to another machine collects.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from runner import progress
from runner.analysis import findings
from runner.analysis.headline import print_summary
from runner.analysis.matrix import sweep_matrix, write_matrix
from runner.analysis.report import write_report
from runner.analysis.report_format import labels_by_job
from runner.analysis.report_recommendation import MAX_KLD, MIN_TOP1
from runner.analysis.samples import sample_rows, write_samples
from runner.sweep import SweepError, load_sweep


def collect(sweep_dir: Path, **report_options: Any) -> pd.DataFrame:
    """Write matrix.csv, matrix.md, samples.csv, samples.jsonl and the report into `sweep_dir`;
    `report_options`: recommendation thresholds."""
    sweep = load_sweep(sweep_dir)
    df = sweep_matrix(sweep)
    write_matrix(df, sweep.dir)
    if not df.empty:
        samples = sample_rows(sweep.records, labels_by_job(df), sweep.baseline())
        write_samples(samples, sweep.dir)
        write_report(df, findings.find(sweep.records), sweep.dir, baseline=sweep.baseline(), samples=samples,
                     **report_options)
    return df


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.collect", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--max-kld", type=float, default=MAX_KLD, help=f"recommendation threshold (default {MAX_KLD})")
    parser.add_argument("--min-top1", type=float, default=MIN_TOP1,
                        help=f"recommendation threshold, %% (default {MIN_TOP1})")
    args = parser.parse_args(argv)
    try:
        df = collect(args.sweep_dir, max_kld=args.max_kld, min_top1=args.min_top1)
    except (SweepError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_summary(df, args.sweep_dir, progress.console(), load_sweep(args.sweep_dir).baseline(),
                  args.max_kld, args.min_top1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
