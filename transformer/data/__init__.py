"""Data: datasets, tokenizers and grain pipelines for every family."""
