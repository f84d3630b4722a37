"""Data, checkpoints, training, sampling and evaluation of the model."""
