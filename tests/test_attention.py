"""softmax, masks, scaled_dot_product_attention (plain and blocked) and soft-align attention,
each checked against a float64 per-query python loop or a property."""

import math
import threading
import tracemalloc
import warnings

import numpy as np
import pytest

import music_attn.core.attention as attention_module
import music_attn.core.attention_blocked as blocked_module
from conftest import formula_sdpa64
from music_attn.core.attention import (
    attention_mask,
    scaled_dot_product_attention as sdpa,
    soft_align_attention,
    softmax,
)


# ----------------------------------------------------------------------------- references


def allowed_loop(i, j, T, S, causal, window, mask):
    """The masking rule written out for one (query, key) pair."""
    pos = i + S - T                                  # query i sits at position i + S - T
    if (causal or window) and j > pos:
        return False
    if window and j <= pos - window:
        return False
    return mask is None or bool(mask[i][j])


def loop_sdpa(q, k, v, *, causal=False, window=None, mask=None, bias=None, scale=None):
    """Float64 per-query loop for 2-D q (T, D), k (S, D), v (S, Dv): (out, weights)."""
    q, k, v = (np.asarray(a, dtype=np.float64).tolist() for a in (q, k, v))
    T, S, D = len(q), len(k), len(q[0])
    scale = 1 / math.sqrt(D) if scale is None else scale
    out, W = np.zeros((T, len(v[0]))), np.zeros((T, S))
    for i in range(T):
        keys = [j for j in range(S) if allowed_loop(i, j, T, S, causal, window, mask)]
        logits = [sum(a * b for a, b in zip(q[i], k[j])) * scale
                  + (0.0 if bias is None else float(bias[i][j])) for j in keys]
        keys = [j for j, x in zip(keys, logits) if x != -math.inf]
        logits = [x for x in logits if x != -math.inf]
        if not keys:
            continue
        top = max(logits)
        e = [math.exp(x - top) for x in logits]
        for n, j in enumerate(keys):
            W[i, j] = e[n] / sum(e)
            out[i] += W[i, j] * np.array(v[j])
    return out, W


def rope_loop(x, positions, base=10000.0):
    """Rotate each pair (x[2i], x[2i+1]) of each row by positions[t] * base**(-2i/D)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    D = x.shape[-1]
    for t in range(x.shape[0]):
        for i in range(D // 2):
            a = positions[t] * base ** (-2 * i / D)
            c, s = math.cos(a), math.sin(a)
            out[t, 2 * i] = x[t, 2 * i] * c - x[t, 2 * i + 1] * s
            out[t, 2 * i + 1] = x[t, 2 * i] * s + x[t, 2 * i + 1] * c
    return out


def rand(rng, *shape, dtype=np.float64):
    return rng.normal(size=shape).astype(dtype)


# ----------------------------------------------------------------------------- softmax


def test_softmax_equals_exp_over_sum():
    x = np.array([[0.5, -1.0, 2.0], [3.0, 3.0, 3.0]])
    ref = [[math.exp(a) / sum(math.exp(b) for b in row) for a in row] for row in x]
    np.testing.assert_allclose(softmax(x), ref, rtol=1e-14)


def test_softmax_of_huge_logits_does_not_overflow():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = softmax(np.array([1e4, 1e4 - 1.0, -1e4]))
    np.testing.assert_allclose(p, [1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1)), 0])


def test_softmax_all_minus_inf_row_gives_zeros_not_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = softmax(np.array([[-np.inf, -np.inf], [0.0, -np.inf]]))
    np.testing.assert_array_equal(p, [[0, 0], [1, 0]])


def test_softmax_does_not_hide_nan():
    p = softmax(np.array([[np.nan, 1.0, 2.0], [1.0, 2.0, 3.0]]))
    assert np.isnan(p[0]).all() and np.isfinite(p[1]).all()


def test_softmax_along_other_axis_sums_to_one():
    x = rand(np.random.default_rng(0), 3, 4, 5)
    np.testing.assert_allclose(softmax(x, axis=1).sum(axis=1), 1.0, rtol=1e-12)


def test_softmax_dtypes():
    assert softmax(np.arange(3)).dtype == np.float64
    assert softmax(np.ones(3, dtype=np.float32)).dtype == np.float32


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("T,S", [(5, 5), (3, 7), (7, 3), (1, 6)])
@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (True, 2), (False, 3)])
def test_attention_mask_equals_rule_written_out(T, S, causal, window):
    ref = [[allowed_loop(i, j, T, S, causal, window, None) for j in range(S)] for i in range(T)]
    np.testing.assert_array_equal(attention_mask(T, S, causal=causal, window=window), ref)


def test_causal_mask_is_lower_triangular_when_square():
    np.testing.assert_array_equal(attention_mask(4, causal=True), np.tril(np.ones((4, 4), bool)))


def test_window_keeps_exactly_w_most_recent_keys():
    m = attention_mask(10, 10, window=3)
    assert m.sum(axis=1).tolist() == [1, 2, 3, 3, 3, 3, 3, 3, 3, 3]
    assert m[9].nonzero()[0].tolist() == [7, 8, 9]


# ----------------------------------------------------------------------------- SDPA vs loop

CASES = [
    dict(),
    dict(causal=True),
    dict(window=3),
    dict(causal=True, window=1),
    dict(scale=0.3),
    dict(mask="random"),
    dict(mask="random", causal=True),
    dict(bias="random"),
    dict(bias="random", window=4, mask="random"),
]


def make_case(case, T, S, rng):
    kw = dict(case)
    if kw.get("mask") == "random":
        kw["mask"] = rng.random((T, S)) < 0.6
    if kw.get("bias") == "random":
        kw["bias"] = rng.normal(size=(T, S))
    return kw


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(sorted(c)) or "plain")
@pytest.mark.parametrize("T,S,D,Dv", [(6, 6, 4, 4), (5, 9, 3, 7), (9, 4, 2, 3)])
@pytest.mark.parametrize("block_size", [None, 2, 5])
def test_every_variant_equals_per_query_loop(case, T, S, D, Dv, block_size):
    rng = np.random.default_rng(T * 100 + S)
    q, k, v = rand(rng, T, D), rand(rng, S, D), rand(rng, S, Dv)
    kw = make_case(case, T, S, rng)
    out, w = sdpa(q, k, v, return_weights=True, block_size=block_size, **kw)
    ref_out, ref_w = loop_sdpa(q, k, v, **kw)
    np.testing.assert_allclose(out, ref_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(w, ref_w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T,S", [(7, 7), (5, 12), (12, 5)])
@pytest.mark.parametrize("window", [None, 3])
def test_causal_and_window_agree_with_explicit_mask(T, S, window):
    rng = np.random.default_rng(3)
    q, k, v = rand(rng, 2, T, 4), rand(rng, 2, S, 4), rand(rng, 2, S, 5)
    explicit = np.array([[allowed_loop(i, j, T, S, True, window, None) for j in range(S)]
                         for i in range(T)])
    np.testing.assert_allclose(sdpa(q, k, v, causal=True, window=window),
                               sdpa(q, k, v, mask=explicit), rtol=1e-12)


def test_bias_of_minus_inf_acts_as_mask():
    rng = np.random.default_rng(4)
    q, k, v = rand(rng, 5, 3), rand(rng, 5, 3), rand(rng, 5, 2)
    mask = rng.random((5, 5)) < 0.5
    mask[:, 0] = True
    np.testing.assert_allclose(sdpa(q, k, v, bias=np.where(mask, 0.0, -np.inf)),
                               loop_sdpa(q, k, v, mask=mask)[0], rtol=1e-12)


def test_cross_attention_with_other_lengths_and_value_dim():
    rng = np.random.default_rng(5)
    q, k, v = rand(rng, 3, 4, 8), rand(rng, 3, 11, 8), rand(rng, 3, 11, 5)
    out = sdpa(q, k, v)
    assert out.shape == (3, 4, 5)
    for b in range(3):
        np.testing.assert_allclose(out[b], loop_sdpa(q[b], k[b], v[b])[0], rtol=1e-10)


@pytest.mark.parametrize("block_size", [None, 3])
def test_leading_dims_broadcast_shared_keys_and_per_head_bias(block_size):
    rng = np.random.default_rng(6)
    q, k, v = rand(rng, 2, 3, 5, 4), rand(rng, 2, 1, 6, 4), rand(rng, 1, 1, 6, 2)
    bias, mask = rand(rng, 3, 5, 6), rng.random((5, 6)) < 0.7
    out = sdpa(q, k, v, bias=bias, mask=mask, causal=True, block_size=block_size)
    assert out.shape == (2, 3, 5, 2)
    for b in range(2):
        for h in range(3):
            ref = loop_sdpa(q[b, h], k[b, 0], v[0, 0], bias=bias[h], mask=mask, causal=True)[0]
            np.testing.assert_allclose(out[b, h], ref, rtol=1e-10)


# ----------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("block_size", [None, 2])
def test_query_with_no_allowed_key_gets_zeros_not_nan(block_size):
    rng = np.random.default_rng(7)
    q, k, v = rand(rng, 4, 3), rand(rng, 4, 3), rand(rng, 4, 2)
    mask = np.ones((4, 4), bool)
    mask[1] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, w = sdpa(q, k, v, mask=mask, return_weights=True, block_size=block_size)
    assert np.all(out[1] == 0) and np.all(w[1] == 0)
    np.testing.assert_allclose(w.sum(axis=1), [1, 0, 1, 1])


@pytest.mark.parametrize("block_size", [None, 2])
def test_causal_with_more_queries_than_keys_gives_zero_rows_for_early_queries(block_size):
    rng = np.random.default_rng(8)
    q, k, v = rand(rng, 6, 3), rand(rng, 4, 3), rand(rng, 4, 2)
    out = sdpa(q, k, v, causal=True, block_size=block_size)
    assert np.all(out[:2] == 0) and np.all(np.isfinite(out))
    np.testing.assert_allclose(out, loop_sdpa(q, k, v, causal=True)[0], rtol=1e-10)


@pytest.mark.parametrize("block_size", [None, 2])
def test_nan_input_is_not_hidden(block_size):
    rng = np.random.default_rng(9)
    q, k, v = rand(rng, 4, 3), rand(rng, 4, 3), rand(rng, 4, 2)
    q[2, 0] = np.nan
    out = sdpa(q, k, v, causal=True, block_size=block_size)
    assert np.isnan(out[2]).all() and np.isfinite(np.delete(out, 2, axis=0)).all()


def test_huge_logits_give_finite_attention():
    q = np.array([[100.0, 0.0]])
    k = np.array([[100.0, 0.0], [99.0, 0.0]])
    out = sdpa(q, k, np.array([[1.0], [0.0]]), scale=1.0)
    assert np.isfinite(out).all() and out[0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("block_size", [None, 4])
def test_dtypes_float32_stays_float32_and_int_becomes_float64(block_size):
    rng = np.random.default_rng(10)
    f = rand(rng, 5, 4, dtype=np.float32)
    out, w = sdpa(f, f, f, bias=np.zeros((5, 5)), return_weights=True, block_size=block_size)
    assert out.dtype == np.float32 and w.dtype == np.float32
    assert sdpa(np.ones((2, 2), int), np.ones((2, 2), int), np.ones((2, 2), int),
                block_size=block_size).dtype == np.float64


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(q=(2, 3), k=(2, 4), v=(2, 4)), r"\(2, 3\).*\(2, 4\)"),
    (dict(q=(2, 3), k=(4, 3), v=(5, 3)), r"\(4, 3\).*\(5, 3\)"),
    (dict(q=(2, 2, 3), k=(3, 2, 3), v=(3, 2, 3)), r"\(2, 2, 3\)"),
])
def test_mismatched_shapes_raise_value_error_naming_them(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        sdpa(*(np.ones(kwargs[n]) for n in "qkv"))


def test_bad_mask_bias_window_block_size_are_refused():
    x = np.ones((3, 2))
    with pytest.raises(ValueError, match="mask"):
        sdpa(x, x, x, mask=np.ones((4, 3), bool))
    with pytest.raises(ValueError, match="boolean"):
        sdpa(x, x, x, mask=np.full((3, 3), -np.inf))
    with pytest.raises(ValueError, match="bias"):
        sdpa(x, x, x, bias=np.ones((2, 3)))
    with pytest.raises(ValueError, match="window"):
        sdpa(x, x, x, window=0)
    with pytest.raises(ValueError, match="block_size"):
        sdpa(x, x, x, block_size=0)


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("kw", [dict(causal=True), dict(window=4), dict(causal=True,
                                                                        block_size=3)])
def test_future_tokens_do_not_change_past_outputs(kw):
    rng = np.random.default_rng(11)
    q, k, v = rand(rng, 2, 12, 4), rand(rng, 2, 12, 4), rand(rng, 2, 12, 3)
    before = sdpa(q, k, v, **kw)
    for t in (0, 5, 11):
        q2, k2, v2 = q.copy(), k.copy(), v.copy()
        for a in (q2, k2, v2):
            a[:, t + 1:] = rng.normal(size=a[:, t + 1:].shape) * 10
        after = sdpa(q2, k2, v2, **kw)
        np.testing.assert_array_equal(after[:, :t + 1], before[:, :t + 1])


@pytest.mark.parametrize("block_size", [None, 4])
def test_causal_queries_aligned_to_the_end_match_a_kv_cache(block_size):
    # the last T queries against all S keys == the last T rows of full causal attention
    rng = np.random.default_rng(12)
    x = rand(rng, 3, 10, 4)
    full = sdpa(x, x, x, causal=True)
    tail = sdpa(x[:, 7:], x, x, causal=True, block_size=block_size)
    np.testing.assert_allclose(tail, full[:, 7:], rtol=1e-12)


def test_attention_is_equivariant_to_permuting_keys_and_values():
    rng = np.random.default_rng(13)
    q, k, v = rand(rng, 4, 3), rand(rng, 6, 3), rand(rng, 6, 2)
    perm = rng.permutation(6)
    np.testing.assert_allclose(sdpa(q, k[perm], v[perm]), sdpa(q, k, v), rtol=1e-12)


# ----------------------------------------------------------------------------- blocked


@pytest.mark.parametrize("T,S", [(37, 37), (50, 73), (101, 29), (1, 64)])
@pytest.mark.parametrize("block_size", [1, 8, 13, 32, 128])
@pytest.mark.parametrize("kw", [dict(), dict(causal=True), dict(window=9)],
                         ids=["full", "causal", "window"])
def test_blocked_equals_unblocked_float32(T, S, block_size, kw):
    rng = np.random.default_rng(T + S + block_size)
    q, k, v = (rand(rng, 2, 3, n, 16, dtype=np.float32) for n in (T, S, S))
    ref, ref_w = sdpa(q, k, v, return_weights=True, **kw)
    out, w = sdpa(q, k, v, return_weights=True, block_size=block_size, **kw)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    np.testing.assert_allclose(w, ref_w, rtol=1e-6, atol=1e-7)


def test_blocked_skips_fully_masked_key_blocks_exactly():
    # the mask hides whole key blocks (and a whole query row); the result is still exact
    rng = np.random.default_rng(14)
    q, k, v = rand(rng, 40, 8), rand(rng, 40, 8), rand(rng, 40, 4)
    mask = np.ones((40, 40), bool)
    mask[:, 8:24] = False
    mask[:16, 32:] = False
    mask[5] = False
    out, w = sdpa(q, k, v, mask=mask, causal=True, block_size=8, return_weights=True)
    ref_out, ref_w = loop_sdpa(q, k, v, mask=mask, causal=True)
    np.testing.assert_allclose(out, ref_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(w, ref_w, rtol=1e-10, atol=1e-12)


def record_fallbacks(monkeypatch):
    """List that grows by one per (head, query block) redone by the classic online softmax."""
    calls = []
    online = blocked_module._Plan.online
    monkeypatch.setattr(blocked_module._Plan, "online",
                        lambda self, *a: calls.append(a) or online(self, *a))
    return calls


@pytest.mark.parametrize("causal", [True, False])
def test_huge_key_orthogonal_to_every_query_needs_no_fallback(monkeypatch, causal):
    # |q| max|k| is useless as a shift here; the logit of each row's last key is not
    rng = np.random.default_rng(20)
    q, k, v = rand(rng, 12, 4) * 10, rand(rng, 12, 4), rand(rng, 12, 3)
    q[:, 1] = 0.0
    k[0] = [0.0, 1e3, 0.0, 0.0]
    calls = record_fallbacks(monkeypatch)
    out = sdpa(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32), causal=causal,
               block_size=4)
    assert not calls
    np.testing.assert_allclose(out, loop_sdpa(q, k, v, causal=causal)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [True, False])
def test_logit_far_above_the_last_keys_falls_back_exactly(monkeypatch, dtype, causal):
    # an old key whose logit exceeds that of the queries' last key by more than exp can
    # bear overflows the fast path's row sums: the block is redone with running maxima
    rng = np.random.default_rng(26)
    q, k, v = rand(rng, 12, 4) * 0.1, rand(rng, 12, 4) * 0.1, rand(rng, 12, 3)
    q[8:, 0] = 60.0
    k[1, 0] = 60.0                                 # logit 60 * 60 / 2 = 1800 for queries 8..11
    calls = record_fallbacks(monkeypatch)
    out = sdpa(q.astype(dtype), k.astype(dtype), v.astype(dtype), causal=causal, block_size=4)
    assert calls
    tol = 1e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(out, loop_sdpa(q, k, v, causal=causal)[0], rtol=tol, atol=tol)


def test_last_key_hidden_by_the_mask_falls_back_exactly(monkeypatch):
    # the last key of queries 8..11 has a logit far above every key the mask lets them
    # see: shifted by it, their row sums underflow, and the block is redone
    rng = np.random.default_rng(27)
    q, k, v = rand(rng, 12, 4) * 0.1, rand(rng, 12, 4) * 0.1, rand(rng, 12, 3)
    q[8:, 0] = 30.0
    k[8:, 0] = 30.0                                # logits 450 among queries and keys 8..11
    mask = np.tril(np.ones((12, 12), bool))
    mask[8:, 8:] = False
    calls = record_fallbacks(monkeypatch)
    out = sdpa(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32), mask=mask,
               causal=True, block_size=4)
    assert calls
    np.testing.assert_allclose(out, loop_sdpa(q, k, v, mask=mask, causal=True)[0], rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("spread", [1.0, 3.0])
def test_fast_path_needs_no_fallback_for_ordinary_inputs(monkeypatch, spread):
    # spread 3: logits of standard deviation 9, rows spanning ~60 from least to largest
    rng = np.random.default_rng(21)
    q, k, v = (rand(rng, 2, 600, 64, dtype=np.float32) for _ in range(3))
    q, k = q * np.float32(spread), k * np.float32(spread)
    monkeypatch.setattr(blocked_module._Plan, "online",
                        lambda *a: pytest.fail("fell back to the classic online softmax"))
    out = sdpa(q, k, v, causal=True)
    np.testing.assert_allclose(out, formula_sdpa64(q, k, v, causal=True), rtol=1e-4, atol=1e-5)


def test_blocked_calls_from_several_threads_at_once_agree():
    rng = np.random.default_rng(22)
    inputs = [tuple(rand(rng, 4, 200, 8, dtype=np.float32) for _ in range(3)) for _ in range(4)]
    expected = [sdpa(*x, causal=True) for x in inputs]
    results = [None] * 4

    def call(n):
        results[n] = sdpa(*inputs[n], causal=True, block_size=32)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for got, ref in zip(results, expected):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_blocked_call_restores_the_blas_thread_count():
    from threadpoolctl import threadpool_info, threadpool_limits

    if not any(lib["user_api"] == "blas" for lib in threadpool_info()):
        pytest.skip("no BLAS library found by threadpoolctl")
    with threadpool_limits(limits=2, user_api="blas"):
        x = np.ones((2, 300, 8), dtype=np.float32)
        sdpa(x, x, x, causal=True, block_size=32)
        assert {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"} == {2}


def test_blocked_memory_grows_with_block_not_with_score_matrix():
    T, D = 4096, 16
    rng = np.random.default_rng(15)
    q, k, v = (rand(rng, T, D, dtype=np.float32) for _ in range(3))
    tracemalloc.start()
    sdpa(q, k, v, causal=True, block_size=128)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < T * T * 4 / 8           # a tiny fraction of the 64 MiB score matrix


PATH_CASES = ([(T, S, dict(causal=True)) for T, S in [(517, 517), (200, 700), (700, 650)]]
              + [(517, 517, dict(window=40)), (700, 650, dict(causal=True, mask="random"))])


@pytest.mark.slow
@pytest.mark.parametrize("T,S,kw", PATH_CASES,
                         ids=[f"{T}x{S}-{'+'.join(kw)}" for T, S, kw in PATH_CASES])
@pytest.mark.parametrize("block_size", [None, 1000, 37])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_path_equals_the_float64_formula(T, S, kw, block_size, dtype):
    """The default path (blocked beyond 256 x 256 when causal or local), one block, blocks
    that do not divide T, batch and heads, float32 and float64: all equal the formula."""
    rng = np.random.default_rng(T + S + (block_size or 0))
    q = rng.standard_normal((2, 3, T, 16)).astype(dtype)
    k, v = (rng.standard_normal((2, 3, S, 16)).astype(dtype) for _ in range(2))
    kw = dict(kw)
    if kw.get("mask") == "random":
        kw["mask"] = rng.random((3, T, S)) < 0.7                  # per head, shared by the batch
    out = sdpa(q, k, v, block_size=block_size, **kw)
    expected = formula_sdpa64(q, k, v, **kw)
    assert out.dtype == dtype
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out, expected, **tol)


@pytest.mark.parametrize("T,S,kw,blocked", [
    (256, 256, dict(causal=True), False),
    (257, 256, dict(causal=True), True),
    (65, 1024, dict(causal=True), True),
    (300, 300, dict(window=16), True),
    (1024, 1024, dict(), False),
    (1024, 1024, dict(causal=True, return_weights=True), False),
])
def test_default_path_is_chosen_from_the_shapes(monkeypatch, T, S, kw, blocked):
    """Causal or local attention beyond 256 x 256 runs blocked by default; shorter,
    non-causal or weight-returning calls take the one-matrix path. Either way the result
    is the formula's."""
    calls = []
    for name in ("_sdpa_full", "_sdpa_blocked"):
        fn = getattr(attention_module, name)
        monkeypatch.setattr(attention_module, name,
                            lambda *a, fn=fn, name=name, **k: calls.append(name) or fn(*a, **k))
    rng = np.random.default_rng(T * S)
    q = rng.standard_normal((2, T, 8))
    k, v = rng.standard_normal((2, 2, S, 8))
    res = sdpa(q, k, v, **kw)
    assert calls == ["_sdpa_blocked" if blocked else "_sdpa_full"]
    out = res[0] if kw.get("return_weights") else res
    expected = formula_sdpa64(q, k, v, causal=kw.get("causal", False), window=kw.get("window"))
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


def test_blocks_and_tiles_cover_each_visible_pair_exactly_once():
    """Whatever the lengths, block size, query block and strip height, the tiles of the
    blocked path hold every (query, key) pair the causal rule allows exactly once, and
    no key block is wider than the block size."""
    rng = np.random.default_rng(24)
    for _ in range(300):
        T, S, bs = (int(n) for n in rng.integers(1, 150, size=3))
        bq = min(bs, int(rng.integers(1, 150)))
        spec = attention_module._Spec(1.0, None, None, True, None, S - T)
        covered = np.zeros((T, S), int)
        for i0 in range(0, T, bq):
            i1 = min(T, i0 + bq)
            blocks = blocked_module._key_blocks(spec, None, i0, i1, S, bs)
            assert all(0 < j1 - j0 <= bs for j0, j1 in blocks)
            for j0, j1 in blocks:
                for r0, r1, hi in blocked_module._block_tiles(spec, i0, i1, j0, j1):
                    assert j0 < hi <= j1
                    covered[i0 + r0:i0 + r1, j0:hi] += 1
        allowed = np.array([[allowed_loop(i, j, T, S, True, None, None) for j in range(S)]
                            for i in range(T)], dtype=bool).reshape(T, S)
        assert (covered[allowed] == 1).all() and (covered <= 1).all(), (T, S, bs, bq)


@pytest.mark.slow
def test_scratch_kept_between_calls_never_leaks_into_the_next_result(monkeypatch):
    """The blocked path keeps per-thread scratch between calls: calls of other shapes and
    dtypes in between, and buffers too large to keep, give the same exact results."""
    rng = np.random.default_rng(25)
    shapes = [((1, 4, 600, 32), np.float32), ((2, 3, 517, 16), np.float64),
              ((3, 300, 8), np.float32), ((1, 4, 600, 32), np.float32)]
    inputs = [tuple(rng.standard_normal(shape).astype(dt) for _ in range(3))
              for shape, dt in shapes]
    expected = [formula_sdpa64(*x, causal=True) for x in inputs]
    for keep in (blocked_module._SCRATCH_KEEP, 0):
        monkeypatch.setattr(blocked_module, "_SCRATCH_KEEP", keep)
        for x, ref in zip(inputs, expected):
            tol = 1e-4 if x[0].dtype == np.float32 else 1e-10
            np.testing.assert_allclose(sdpa(*x, causal=True), ref, rtol=tol, atol=tol / 10)


# ----------------------------------------------------------------------------- soft align


def window_loop_mask(T, S, window):
    return [[allowed_loop(i, j, T, S, True, window, None) for j in range(S)] for i in range(T)]


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("T,S", [(20, 20), (5, 20)])
def test_soft_align_equals_mix_of_window_loop_and_rope_loop(alpha, T, S):
    rng = np.random.default_rng(16)
    q, k, v = rand(rng, T, 8), rand(rng, S, 8), rand(rng, S, 3)
    out, w = soft_align_attention(q, k, v, alpha=alpha, window=4, return_weights=True)
    loc_out, loc_w = loop_sdpa(q, k, v, mask=window_loop_mask(T, S, 4))
    pos = np.arange(S)
    glob_out, glob_w = loop_sdpa(rope_loop(q, pos[S - T:]), rope_loop(k, pos), v, causal=True)
    np.testing.assert_allclose(out, alpha * loc_out + (1 - alpha) * glob_out, rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(w, alpha * loc_w + (1 - alpha) * glob_w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(w @ v, out, rtol=1e-10, atol=1e-12)


def test_soft_align_default_window_is_16_and_blocked_agrees():
    rng = np.random.default_rng(17)
    q, k, v = (rand(rng, 2, 40, 8, dtype=np.float32) for _ in range(3))
    out = soft_align_attention(q, k, v, alpha=1.0)
    ref = np.stack([loop_sdpa(q[b], k[b], v[b], window=16)[0] for b in range(2)])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    blocked = soft_align_attention(q, k, v, alpha=0.4, block_size=7)
    np.testing.assert_allclose(blocked, soft_align_attention(q, k, v, alpha=0.4),
                               rtol=1e-6, atol=1e-6)
    assert blocked.dtype == np.float32


def test_soft_align_is_causal():
    rng = np.random.default_rng(18)
    q, k, v = rand(rng, 30, 8), rand(rng, 30, 8), rand(rng, 30, 2)
    before = soft_align_attention(q, k, v)
    k2 = k.copy()
    k2[20:] += 5.0
    np.testing.assert_array_equal(soft_align_attention(q, k2, v)[:20], before[:20])


def test_soft_align_mask_applies_to_both_branches():
    rng = np.random.default_rng(23)
    q, k, v = rand(rng, 10, 4), rand(rng, 10, 4), rand(rng, 10, 2)
    mask = rng.random((10, 10)) < 0.6
    out = soft_align_attention(q, k, v, alpha=0.25, window=3, mask=mask)
    local = [[allowed_loop(i, j, 10, 10, True, 3, mask) for j in range(10)] for i in range(10)]
    glob = loop_sdpa(rope_loop(q, np.arange(10)), rope_loop(k, np.arange(10)), v, causal=True,
                     mask=mask)[0]
    np.testing.assert_allclose(out, 0.25 * loop_sdpa(q, k, v, mask=local)[0] + 0.75 * glob,
                               rtol=1e-10, atol=1e-12)


def test_soft_align_non_causal_local_branch_is_a_symmetric_band():
    rng = np.random.default_rng(19)
    q, k, v = rand(rng, 9, 4), rand(rng, 9, 4), rand(rng, 9, 2)
    band = [[abs(i - j) < 3 for j in range(9)] for i in range(9)]
    np.testing.assert_allclose(soft_align_attention(q, k, v, alpha=1.0, window=3, causal=False),
                               loop_sdpa(q, k, v, mask=band)[0], rtol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("T, window", [(600, None), (700, 50), (2100, None)])
def test_default_call_on_long_sequences_equals_the_formula(T, window):
    """Long causal/local attention takes the blocked path by default; it must equal the
    three-line formula computed here in float64."""
    rng = np.random.default_rng(T)
    q, k, v = (rng.standard_normal((2, T, 16), dtype=np.float32) for _ in range(3))
    out = sdpa(q, k, v, causal=True, window=window)
    q64, k64, v64 = (a.astype(np.float64) for a in (q, k, v))
    logits = q64 @ np.swapaxes(k64, -1, -2) / 4.0
    allowed = attention_mask(T, T, causal=True, window=window)
    logits[:, ~allowed] = -np.inf
    w = np.exp(logits - logits.max(-1, keepdims=True))
    expected = (w / w.sum(-1, keepdims=True)) @ v64
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
