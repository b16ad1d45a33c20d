"""Mars benchmarks: `make bench` (python -m bench). Ratios against baselines measured in the same run."""
