"""Metrics, evaluation of a model on a dataset, calibration and fitting the out-of-distribution gate."""
