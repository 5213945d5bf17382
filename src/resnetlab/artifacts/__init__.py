"""What a run leaves behind and what comes from others: the run folder and its metadata,
weights in and out, weight sources, converted checkpoints, a model's preprocessing."""
