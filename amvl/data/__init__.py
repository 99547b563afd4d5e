"""Datasets: BLINK's parquet schema, the synthetic mini-BLINK, and batching."""
