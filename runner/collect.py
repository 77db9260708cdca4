"""python -m runner.collect SWEEP_DIR: the matrix, report and answer of a saved sweep (runner/analysis/collect.py)."""

import sys

from runner.analysis.collect import main

if __name__ == "__main__":
    sys.exit(main())
