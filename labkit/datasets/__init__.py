"""Deterministic generators of Instagram-like data and loaders for files in `datasets/`."""
