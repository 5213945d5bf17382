"""Experiments: the degradation study and hyper-parameter search."""
