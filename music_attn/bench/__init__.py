"""Benchmarks behind ``music-attn bench``: each module has ``run(quick=False)`` printing a table."""
