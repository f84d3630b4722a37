"""The interview API: compute_qkv, self_attention and multi_head_attention, pinned values."""

import math

import numpy as np
import pytest

from music_attn.core.attention import compute_qkv, multi_head_attention, self_attention

I2 = np.eye(2)
V12 = np.array([[1.0, 2.0], [3.0, 4.0]])


def loop_attention(Q, K, V, mask=None):
    """Float64 per-query python loop: softmax(q.k / sqrt(d)) v over the allowed keys."""
    Q, K, V = (np.asarray(a, dtype=np.float64).tolist() for a in (Q, K, V))
    d = len(Q[0])
    out = []
    for i, q in enumerate(Q):
        keys = [j for j in range(len(K)) if mask is None or mask[i][j]]
        logits = [sum(a * b for a, b in zip(q, K[j])) / math.sqrt(d) for j in keys]
        top = max(logits, default=0.0)
        e = [math.exp(x - top) for x in logits]
        z = sum(e)
        out.append([sum(e[n] / z * V[j][c] for n, j in enumerate(keys)) for c in range(len(V[0]))])
    return np.array(out)


def loop_multi_head(Q, K, V, n_heads, mask=None):
    """Cut the feature axis into n_heads column groups, attend each, concatenate."""
    d = Q.shape[1] // n_heads
    dv = V.shape[1] // n_heads
    cols = [loop_attention(Q[:, h * d:(h + 1) * d], K[:, h * d:(h + 1) * d],
                           V[:, h * dv:(h + 1) * dv], mask) for h in range(n_heads)]
    return np.concatenate(cols, axis=1)


def test_self_attention_pinned_value():
    expected = [[1.660477, 2.660477], [2.339523, 3.339523]]
    np.testing.assert_allclose(self_attention(I2, I2, V12), expected, atol=1e-6)


def test_pinned_value_through_compute_qkv():
    Q, K, V = compute_qkv(I2, I2, I2, V12)
    np.testing.assert_allclose(self_attention(Q, K, V), [[1.660477, 2.660477],
                                                         [2.339523, 3.339523]], atol=1e-6)


def test_compute_qkv_is_three_products():
    rng = np.random.default_rng(0)
    X, Wq, Wk, Wv = rng.normal(size=(5, 4)), rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), \
        rng.normal(size=(4, 2))
    Q, K, V = compute_qkv(X, Wq, Wk, Wv)
    for got, W in ((Q, Wq), (K, Wk), (V, Wv)):
        ref = [[sum(X[t, c] * W[c, d] for c in range(4)) for d in range(W.shape[1])]
               for t in range(5)]
        np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_heads_split_the_feature_axis_pinned_value():
    # head 0 sees feature 0, head 1 feature 1: softmax([1, 0] / 1) = [0.731059, 0.268941]
    e = math.e / (math.e + 1)
    out = multi_head_attention(I2, I2, I2, n_heads=2)
    np.testing.assert_allclose(out, [[0.731059, 0.5], [0.5, 0.731059]], atol=1e-6)
    assert abs(out[0, 0] - e) < 1e-12


def test_splitting_the_sequence_axis_would_print_the_identity():
    # The classic bug: "heads" made of rows (tokens) instead of columns (features).
    # Each single-token "head" attends only to itself, so the output is V = I2.
    rows = np.concatenate([loop_attention(I2[t:t + 1], I2[t:t + 1], I2[t:t + 1])
                           for t in range(2)])
    np.testing.assert_allclose(rows, I2)
    assert not np.allclose(multi_head_attention(I2, I2, I2, n_heads=2), I2)


def test_multi_head_4d_identity_weights_equals_float64_loop():
    X = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    Q, K, V = compute_qkv(X, np.eye(4), np.eye(4), np.eye(4))
    out = multi_head_attention(Q, K, V, n_heads=2)
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out, loop_multi_head(X.astype(float), X.astype(float),
                                                    X.astype(float), 2), rtol=1e-12)


@pytest.mark.parametrize("n_heads", [1, 2, 3, 6])
def test_multi_head_random_equals_loop(n_heads):
    rng = np.random.default_rng(n_heads)
    Q, K, V = rng.normal(size=(5, 6)), rng.normal(size=(7, 6)), rng.normal(size=(7, 12))
    np.testing.assert_allclose(multi_head_attention(Q, K, V, n_heads),
                               loop_multi_head(Q, K, V, n_heads), rtol=1e-10)


def test_multi_head_mask_is_shared_by_every_head():
    rng = np.random.default_rng(1)
    Q, K, V = rng.normal(size=(4, 4)), rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    mask = np.tril(np.ones((4, 4), dtype=bool))
    np.testing.assert_allclose(multi_head_attention(Q, K, V, 2, mask=mask),
                               loop_multi_head(Q, K, V, 2, mask), rtol=1e-10)


def test_self_attention_mask_keeps_only_allowed_keys():
    rng = np.random.default_rng(2)
    Q, K, V = rng.normal(size=(3, 2)), rng.normal(size=(4, 2)), rng.normal(size=(4, 3))
    mask = np.array([[1, 0, 0, 1], [0, 1, 1, 1], [1, 1, 1, 1]], dtype=bool)
    np.testing.assert_allclose(self_attention(Q, K, V, mask=mask),
                               loop_attention(Q, K, V, mask), rtol=1e-10)


def test_integer_inputs_are_computed_in_float64():
    out = self_attention([[1, 0], [0, 1]], [[1, 0], [0, 1]], [[1, 2], [3, 4]])
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [[1.660477, 2.660477], [2.339523, 3.339523]], atol=1e-6)
    Q, K, V = compute_qkv(np.array([[1, 2]]), np.eye(2, dtype=int), np.eye(2, dtype=int),
                          np.eye(2, dtype=int))
    assert Q.dtype == np.float64
    assert multi_head_attention(np.eye(2, dtype=int), np.eye(2, dtype=int),
                                np.eye(2, dtype=int), 2).dtype == np.float64


def test_float32_stays_float32():
    f = np.eye(2, dtype=np.float32)
    assert self_attention(f, f, V12.astype(np.float32)).dtype == np.float32
    assert multi_head_attention(f, f, f, 2).dtype == np.float32
    assert all(a.dtype == np.float32 for a in compute_qkv(f, f, f, f))


def test_n_heads_not_dividing_model_dim_names_the_shape():
    with pytest.raises(ValueError, match=r"n_heads=3.*\(2, 4\)"):
        multi_head_attention(np.ones((2, 4)), np.ones((2, 4)), np.ones((2, 4)), 3)


@pytest.mark.parametrize("call", [
    lambda: self_attention(np.ones((2, 3)), np.ones((2, 4)), np.ones((2, 4))),
    lambda: self_attention(np.ones((2, 3)), np.ones((2, 3)), np.ones((5, 3))),
    lambda: multi_head_attention(np.ones((2, 4)), np.ones((2, 6)), np.ones((2, 4)), 2),
])
def test_mismatched_shapes_raise_value_error_naming_them(call):
    with pytest.raises(ValueError, match=r"\(2, 3\)|\(2, 4\)"):
        call()


def test_compute_qkv_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 4\)"):
        compute_qkv(np.ones((2, 3)), np.ones((4, 4)), np.ones((3, 4)), np.ones((3, 4)))
