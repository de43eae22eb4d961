"""ml_collections configs; load with --config=configs/<file>.py[:arg] from the repo root."""
