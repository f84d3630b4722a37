"""Runtime: loading models, windows, sampling, continuation and harmonization."""
