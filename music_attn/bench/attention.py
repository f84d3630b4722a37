"""Benchmark of causal attention: ours vs naive numpy vs torch SDPA, and blocked peak memory.

Run with ``music-attn bench attention [--quick]`` or
``python -c "from music_attn.bench.attention import run; run()"``.

Times are the best of several runs, interleaved so that a busy machine slows every
contender alike. Torch (when installed) gets as many threads as we use cores.
"""

import os
import time
import tracemalloc

import numpy as np

from music_attn.core.attention import scaled_dot_product_attention
from music_attn.bench._timing import best_of

__all__ = ["run", "naive_causal_attention"]

H, D = 8, 64


def naive_causal_attention(q, k, v):
    """The textbook version: full score matrix, -inf above the diagonal, softmax, product."""
    T = q.shape[-2]
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])      # (..., T, T)
    scores = scores + np.triu(np.full((T, T), -np.inf, dtype=q.dtype), k=1)
    w = np.exp(scores - scores.max(axis=-1, keepdims=True))
    w /= w.sum(axis=-1, keepdims=True)
    return w @ v                                                    # (..., T, D)


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _best_times(fns, reps):
    """Best wall time of each function in ``fns`` (a dict), each warmed up and timed in a
    block of its own (see :func:`best_of`)."""
    best = {}
    for name, fn in fns.items():
        fn()                                   # warm-up
        best[name] = best_of(fn, reps)
    return best


def _contenders(T, rng, torch, naive):
    """Name -> zero-argument function, for one sequence length."""
    q, k, v = (rng.standard_normal((1, H, T, D), dtype=np.float32) for _ in range(3))
    fns = {"ours": lambda: scaled_dot_product_attention(q, k, v, causal=True)}  # the default path
    if naive:
        fns["naive"] = lambda: naive_causal_attention(q, k, v)
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
        sdpa = torch.nn.functional.scaled_dot_product_attention
        fns["torch"] = lambda: sdpa(tq, tk, tv, is_causal=True)
    return fns


def _max_diff(fns):
    """Largest |ours - reference| over the contenders' outputs (a correctness check)."""
    ours = fns["ours"]()
    refs = [np.asarray(fn()) for name, fn in fns.items() if name != "ours"]
    return max((float(np.abs(ours - r).max()) for r in refs), default=0.0)


def _fmt(seconds):
    return "-" if seconds is None else f"{seconds * 1e3:9.1f}"


def _time_table(lengths, reps, torch):
    rng = np.random.default_rng(0)
    print(f"causal attention, B=1 H={H} D={D} float32, {os.cpu_count()} cores, "
          f"ours: the default call scaled_dot_product_attention(q, k, v, causal=True); "
          f"best of {reps}, ms")
    print(f"{'T':>6} {'ours':>9} {'naive':>9} {'torch':>9} {'ours/torch':>11} "
          f"{'naive/ours':>11} {'max|diff|':>10}")
    for T in lengths:
        fns = _contenders(T, rng, torch, naive=True)
        diff = _max_diff(fns)
        best = _best_times(fns, reps)
        best_torch = best.get("torch")
        ratio = f"{best['ours'] / best_torch:11.2f}" if best_torch else f"{'-':>11}"
        print(f"{T:>6} {_fmt(best['ours'])} {_fmt(best['naive'])} {_fmt(best_torch):>9} "
              f"{ratio} {best['naive'] / best['ours']:11.1f} {diff:10.1e}")


def _memory_line(T):
    """Peak memory traced while the default causal attention (blocked at this length) runs, H=1."""
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 1, T, D), dtype=np.float32) for _ in range(3))
    tracemalloc.start()
    t0 = time.perf_counter()
    scaled_dot_product_attention(q, k, v, causal=True)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    full = T * T * 4
    print(f"default causal attention, T={T} H=1 D={D} float32: peak {peak / 2**20:.1f} MiB "
          f"beyond the inputs (the full score matrix alone: {full / 2**30:.2f} GiB), "
          f"{seconds:.2f} s")


def run(quick=False):
    """Print the timing table and the peak-memory line.

    Parameters
    ----------
    quick : bool
        Small sizes and few repetitions (a smoke run).
    """
    torch = _torch()
    threads = None
    if torch is not None:
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)
    try:
        _time_table([256, 1024] if quick else [256, 1024, 2048, 4096], 2 if quick else 7, torch)
    finally:
        if torch is not None:
            torch.set_num_threads(threads)
    if torch is None:
        print("(torch is not installed: no reference column)")
    _memory_line(4096 if quick else 32768)
