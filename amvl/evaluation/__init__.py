"""Scoring predictions on BLINK-style benchmarks."""
