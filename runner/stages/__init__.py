"""The stages of a cell, in the order runner/pipeline.py runs them: prepare, generate, judge, fidelity."""
