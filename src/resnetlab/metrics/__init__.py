"""Measures of a model's outputs that training and the tools after it share: the one
logits loop, top-k counts, temperature scaling and calibration error, the multi-label
measures (AP, F1, per-class thresholds) and the one fingerprint of a model's weights.
Nothing here imports the training package, so predict, evaluate and export load without it."""
