"""Performance: the benchmark (``python -m fracture bench``) and the dashboard load test."""
