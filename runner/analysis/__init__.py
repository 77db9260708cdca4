"""Analysis of saved sweeps: reads records only, imports no engine and no stage (matrix, statistics, verdicts,
report, answer view, compare, the answer on the terminal)."""
