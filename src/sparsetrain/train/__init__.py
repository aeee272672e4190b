"""Training: one readable loop (`loop.py`), the Hydra-facing runner (`runner.py`), results files."""
