"""Training: corpora and token datasets, the training loop, evaluation and the n-gram baseline."""
