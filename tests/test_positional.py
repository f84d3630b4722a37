"""Positional encodings: sinusoids, RoPE, the Music Transformer skew and its adjoint."""

import math
import tracemalloc

import numpy as np
import pytest

from music_attn.core.positional import (
    apply_rope,
    relative_block,
    relative_block_backward,
    relative_logits,
    relative_rows,
    relative_table,
    relative_logits_backward,
    rope_angles,
    sinusoidal,
    skew,
    skew_backward,
)


def rand(rng, *shape, dtype=np.float64):
    return rng.normal(size=shape).astype(dtype)


# ----------------------------------------------------------------------------- sinusoidal


@pytest.mark.parametrize("C", [1, 2, 7, 16])
def test_sinusoidal_matches_the_textbook_formula(C):
    T = 9
    ref = [[math.sin(t / 10000 ** (c / C)) if c % 2 == 0 else math.cos(t / 10000 ** ((c - 1) / C))
            for c in range(C)] for t in range(T)]
    pe = sinusoidal(T, C)
    assert pe.shape == (T, C) and pe.dtype == np.float64
    np.testing.assert_allclose(pe, ref, rtol=1e-12, atol=1e-12)


def test_sinusoidal_first_row_alternates_zero_one_and_dtype_is_honoured():
    pe = sinusoidal(4, 5, dtype=np.float32)
    assert pe.dtype == np.float32
    np.testing.assert_array_equal(pe[0], [0, 1, 0, 1, 0])


def test_sinusoidal_position_shift_is_a_rotation_of_each_pair():
    # the reason sinusoids help: PE[t + k] is a fixed linear (rotation) map of PE[t]
    pe = sinusoidal(20, 8)
    k = 3
    for i in range(4):
        a = k / 10000 ** (2 * i / 8)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        np.testing.assert_allclose(pe[:-k, 2 * i:2 * i + 2] @ rot, pe[k:, 2 * i:2 * i + 2],
                                   atol=1e-12)


def test_sinusoidal_rejects_bad_sizes():
    with pytest.raises(ValueError):
        sinusoidal(3, 0)


# ----------------------------------------------------------------------------- RoPE


def test_rope_rotates_each_pair_by_position_times_frequency():
    rng = np.random.default_rng(0)
    x, pos = rand(rng, 5, 6), np.array([0, 3, 7, 2, 11])
    out = apply_rope(x, pos, base=100.0)
    for t in range(5):
        for i in range(3):
            a = pos[t] * 100.0 ** (-2 * i / 6)
            c, s = math.cos(a), math.sin(a)
            assert out[t, 2 * i] == pytest.approx(x[t, 2 * i] * c - x[t, 2 * i + 1] * s, abs=1e-12)
            assert out[t, 2 * i + 1] == pytest.approx(x[t, 2 * i] * s + x[t, 2 * i + 1] * c,
                                                      abs=1e-12)


def test_rope_score_depends_only_on_relative_position():
    rng = np.random.default_rng(1)
    q, k = rand(rng, 1, 16), rand(rng, 1, 16)
    scores = {}
    for m in range(0, 12):
        for n in range(0, 12):
            s = float((apply_rope(q, [m]) @ apply_rope(k, [n]).T)[0, 0])
            scores.setdefault(m - n, []).append(s)
    for offset, values in scores.items():
        np.testing.assert_allclose(values, values[0], rtol=1e-9, atol=1e-12)
    assert not np.isclose(scores[0][0], scores[3][0])      # and it does depend on m - n


def test_rope_preserves_norms_and_inverse_undoes_it():
    rng = np.random.default_rng(2)
    x = rand(rng, 2, 3, 7, 8)
    y = apply_rope(x)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-12)
    np.testing.assert_allclose(apply_rope(y, inverse=True), x, atol=1e-12)


def test_rope_inverse_is_the_adjoint_so_it_is_the_backward_pass():
    rng = np.random.default_rng(3)
    x, g = rand(rng, 6, 8), rand(rng, 6, 8)
    pos = rng.integers(0, 50, size=6)
    lhs = np.sum(apply_rope(x, pos) * g)
    rhs = np.sum(x * apply_rope(g, pos, inverse=True))
    assert lhs == pytest.approx(rhs, rel=1e-12)


def test_rope_position_zero_is_identity_and_dtype_is_kept():
    x = np.arange(8, dtype=np.float32).reshape(1, 8)
    y = apply_rope(x, [0])
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x)
    assert apply_rope(np.ones((2, 4), dtype=int)).dtype == np.float64


def test_rope_rejects_odd_dimension_and_bad_positions():
    with pytest.raises(ValueError, match="even"):
        apply_rope(np.ones((3, 5)))
    with pytest.raises(ValueError, match="positions"):
        apply_rope(np.ones((3, 4)), [0, 1])
    assert rope_angles(np.arange(3), 4).shape == (3, 2)


# ----------------------------------------------------------------------------- skew / relative


def gather_relative(q, rel, S):
    """Explicit gather: logits[i, j] = q[i] . rel[L-1-d] with d = i+S-T-j >= 0, else 0."""
    T, L = q.shape[0], rel.shape[0]
    out = np.zeros((T, S))
    for i in range(T):
        for j in range(S):
            d = i + S - T - j
            if d >= 0:
                out[i, j] = sum(q[i, c] * rel[L - 1 - d, c] for c in range(q.shape[1]))
    return out


@pytest.mark.parametrize("T,S,L", [(1, 1, 1), (6, 6, 6), (6, 6, 10), (3, 8, 8), (4, 9, 12)])
def test_skewed_relative_logits_equal_explicit_gather(T, S, L):
    rng = np.random.default_rng(T * S + L)
    q, rel = rand(rng, T, 5), rand(rng, L, 5)
    out = relative_logits(q, rel, key_len=None if S == T else S)
    np.testing.assert_allclose(out, gather_relative(q, rel, S), rtol=1e-12, atol=1e-12)


def test_relative_logits_with_heads_and_shared_embeddings():
    rng = np.random.default_rng(4)
    q, rel = rand(rng, 2, 3, 7, 4), rand(rng, 9, 4)
    out = relative_logits(q, rel)
    assert out.shape == (2, 3, 7, 7)
    np.testing.assert_allclose(out[1, 2], gather_relative(q[1, 2], rel, 7), rtol=1e-12)


def test_relative_logits_never_build_a_T_T_D_tensor():
    T, D = 512, 64
    rng = np.random.default_rng(5)
    q, rel = rand(rng, T, D), rand(rng, T, D)
    tracemalloc.start()
    relative_logits(q, rel)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < T * T * D * 8 / 16       # the gathered tensor would be 128 MiB


def test_relative_logits_reject_too_few_embeddings():
    with pytest.raises(ValueError, match=r"\(5, 4\).*\(3, 4\)"):
        relative_logits(np.ones((5, 4)), np.ones((3, 4)))


@pytest.mark.parametrize("shape", [(1, 1), (5, 5), (3, 7), (2, 3, 4, 4), (2, 4, 6)])
def test_skew_backward_is_the_exact_adjoint_of_skew(shape):
    rng = np.random.default_rng(sum(shape))
    x, g = rand(rng, *shape), rand(rng, *shape)
    assert np.sum(skew(x) * g) == pytest.approx(np.sum(x * skew_backward(g)), rel=1e-12)


def test_skew_backward_matches_the_transpose_of_skew_as_a_matrix():
    T, S = 3, 5
    eye = np.eye(T * S).reshape(T * S, T, S)
    M = np.stack([skew(e).ravel() for e in eye], axis=1)          # skew as a (TS, TS) matrix
    Mt = np.stack([skew_backward(e).ravel() for e in eye], axis=1)
    np.testing.assert_array_equal(Mt, M.T)


def test_skew_rejects_more_queries_than_keys():
    with pytest.raises(ValueError):
        skew(np.ones((4, 3)))
    with pytest.raises(ValueError):
        skew_backward(np.ones((4, 3)))


@pytest.mark.parametrize("q_shape,rel_shape,S", [((4, 3), (6, 3), None), ((2, 3, 5), (7, 5), 7),
                                                 ((2, 2, 3, 2), (2, 1, 4, 2), None)])
def test_relative_logits_backward_matches_central_differences(q_shape, rel_shape, S):
    rng = np.random.default_rng(len(q_shape) + S if S else 0)
    q, rel = rand(rng, *q_shape), rand(rng, *rel_shape)
    g = rand(rng, *relative_logits(q, rel, key_len=S).shape)     # random upstream gradient
    dq, drel = relative_logits_backward(g, q, rel, key_len=S)
    assert dq.shape == q.shape and drel.shape == rel.shape
    for x, dx in ((q, dq), (rel, drel)):
        num = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            old = x[idx]
            x[idx] = old + 1e-6
            plus = np.sum(relative_logits(q, rel, key_len=S) * g)
            x[idx] = old - 1e-6
            minus = np.sum(relative_logits(q, rel, key_len=S) * g)
            x[idx] = old
            num[idx] = (plus - minus) / 2e-6
        np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-8)


def test_unmasked_relative_logits_agree_with_the_masked_ones_on_the_causal_region():
    rng = np.random.default_rng(7)
    q, rel = rng.normal(size=(2, 3, 5, 4)), rng.normal(size=(3, 9, 4))
    masked = relative_logits(q, rel, key_len=8)
    view = relative_logits(q, rel, key_len=8, masked=False)
    causal = np.arange(8)[None, :] <= np.arange(5)[:, None] + 3
    np.testing.assert_array_equal(view[..., causal], masked[..., causal])
    assert np.all(masked[..., ~causal] == 0)


# (start, i0, i1, lo, hi) of causal blocks: the first block, a middle one, a cached start, a window
BLOCKS = [(0, 0, 4, 0, 4), (0, 4, 7, 0, 7), (5, 2, 6, 0, 11), (3, 4, 8, 2, 11), (0, 0, 1, 0, 1)]


@pytest.mark.parametrize("start,i0,i1,lo,hi", BLOCKS)
def test_relative_block_equals_the_explicit_gather_on_its_causal_entries(start, i0, i1, lo, hi):
    """Block [i0, i1) x [lo, hi) of queries at positions start + i: q[i] . rel[L-1-d] with
    d = start + i - j, wherever d >= 0 (the rest is masked by causal attention)."""
    rng = np.random.default_rng(start + 10 * i0 + hi)
    L, D, t = 12, 3, i1 - i0
    q, rel = rand(rng, 2, t, D), rand(rng, 2, L, D)           # two heads
    table = relative_table(rel, 4)
    out = relative_block(q, table, relative_rows(L, start, i0, i1, lo, hi), hi - lo)
    assert out.shape == (2, t, hi - lo)
    for h in range(2):
        for r in range(t):
            for j in range(hi - lo):
                d = start + i0 + r - (lo + j)
                if d >= 0:
                    assert out[h, r, j] == pytest.approx(sum(q[h, r, c] * rel[h, L - 1 - d, c] for c in range(D)),
                                                         rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("start,i0,i1,lo,hi", BLOCKS)
def test_relative_block_backward_is_the_adjoint_in_q_and_in_the_table(start, i0, i1, lo, hi):
    """<relative_block(q), g> = <q, dq> = <table[rows], dtable_rows>: the block is linear
    in q and in the table, so its adjoint pairs exactly with a random g."""
    rng = np.random.default_rng(hi - lo + start)
    L, D, t = 12, 3, i1 - i0
    q, table = rand(rng, 3, 2, t, D), relative_table(rand(rng, 2, L, D), 4)
    rows = relative_rows(L, start, i0, i1, lo, hi)
    g = rand(rng, 3, 2, t, hi - lo)
    dq, drows = relative_block_backward(g, q, table, rows)
    forward = np.sum(relative_block(q, table, rows, hi - lo) * g)
    assert np.sum(q * dq) == pytest.approx(forward, rel=1e-12)
    assert np.sum(table[:, rows, :] * drows) == pytest.approx(forward, rel=1e-12)


def test_relative_rows_refuse_distances_beyond_the_table():
    with pytest.raises(ValueError, match="L=4"):
        relative_rows(4, 3, 0, 2, 0, 5)
