"""Scoring predictions on BLINK-style benchmarks."""

from amvl.evaluation.extract import extract_choice

__all__ = ["extract_choice"]
