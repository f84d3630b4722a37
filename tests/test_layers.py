"""Every hand-written backward against central finite differences (float64), and every
forward against a plain-loop reference written from the formula."""

import math

import numpy as np
import pytest

from music_attn.core.attention import soft_align_attention
from music_attn.core.layers import (
    AttentionSpec,
    attention_backward,
    attention_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    embedding_forward,
    gelu_backward,
    gelu_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
)
from music_attn.core.positional import skew, skew_backward, skew_view, skew_view_backward
from music_attn.core.model import ModelConfig, init_model

EPS = 1e-6


def rel_error(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300)


def numerical_grad(f, x, dout, entries=None):
    """d sum(f() * dout) / d x by central differences (x is perturbed in place).

    ``entries`` (optional) checks only that many random entries; the others stay 0
    and are compared only where checked.
    """
    grad = np.zeros_like(x)
    index = list(np.ndindex(x.shape))
    if entries is not None and entries < len(index):
        picks = np.random.default_rng(0).choice(len(index), entries, replace=False)
        index = [index[i] for i in picks]
    for i in index:
        old = x[i]
        x[i] = old + EPS
        plus = np.sum(f() * dout)
        x[i] = old - EPS
        minus = np.sum(f() * dout)
        x[i] = old
        grad[i] = (plus - minus) / (2 * EPS)
    return grad, index


def assert_grad(f, x, analytic, dout, entries=None):
    numeric, index = numerical_grad(f, x, dout, entries)
    if entries is not None:
        mask = np.zeros(x.shape, bool)
        for i in index:
            mask[i] = True
        analytic, numeric = analytic[mask], numeric[mask]
    assert rel_error(analytic, numeric) < 1e-6


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# --------------------------------------------------------------------------- simple layers

def test_embedding_gradient_sums_rows_of_repeated_ids(rng):
    ids = np.array([[1, 3, 1], [0, 3, 3]])
    W = rng.normal(size=(5, 4))
    out, cache = embedding_forward(ids, W)
    dout = rng.normal(size=out.shape)
    dW = embedding_backward(dout, cache)
    assert_grad(lambda: embedding_forward(ids, W)[0], W, dW, dout)
    np.testing.assert_allclose(dW[3], dout[0, 1] + dout[1, 1] + dout[1, 2])
    assert not dW[2].any() and not dW[4].any()


def test_layernorm_forward_matches_the_formula_row_by_row(rng):
    x, g, b = rng.normal(size=(2, 3, 6)), rng.normal(size=6), rng.normal(size=6)
    out, _ = layernorm_forward(x, g, b)
    for row, y in zip(x.reshape(-1, 6), out.reshape(-1, 6)):
        mean = sum(row) / 6
        var = sum((v - mean) ** 2 for v in row) / 6
        expected = [(v - mean) / math.sqrt(var + 1e-5) * gi + bi for v, gi, bi in zip(row, g, b)]
        np.testing.assert_allclose(y, expected, rtol=1e-12)


def test_layernorm_backward_matches_finite_differences(rng):
    x, g, b = rng.normal(size=(2, 3, 6)), rng.normal(size=6), rng.normal(size=6)
    out, cache = layernorm_forward(x, g, b)
    dout = rng.normal(size=out.shape)
    dx, dg, db = layernorm_backward(dout, cache)
    f = lambda: layernorm_forward(x, g, b)[0]  # noqa: E731
    assert_grad(f, x, dx, dout)
    assert_grad(f, g, dg, dout)
    assert_grad(f, b, db, dout)


def test_linear_backward_matches_finite_differences(rng):
    x, W, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(4, 5)), rng.normal(size=5)
    out, cache = linear_forward(x, W, b)
    np.testing.assert_allclose(out[1, 2], [sum(x[1, 2, i] * W[i, j] for i in range(4)) + b[j]
                                           for j in range(5)], rtol=1e-12)
    dout = rng.normal(size=out.shape)
    dx, dW, db = linear_backward(dout, cache)
    f = lambda: linear_forward(x, W, b)[0]  # noqa: E731
    assert_grad(f, x, dx, dout)
    assert_grad(f, W, dW, dout)
    assert_grad(f, b, db, dout)


def test_gelu_is_the_tanh_form_and_its_backward_matches(rng):
    x = rng.normal(scale=2.0, size=(3, 7))
    out, cache = gelu_forward(x.copy())
    expected = [0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
                for v in x.ravel()]
    np.testing.assert_allclose(out.ravel(), expected, rtol=1e-10, atol=1e-14)
    dout = rng.normal(size=x.shape)
    assert_grad(lambda: gelu_forward(x)[0], x, gelu_backward(dout, cache), dout)


def test_cross_entropy_ignores_negative_targets_and_matches_a_loop(rng):
    logits = rng.normal(size=(2, 4, 6))
    targets = np.array([[1, -1, 5, 0], [2, 2, -1, 3]])
    loss, cache = cross_entropy_forward(logits, targets)
    terms = [math.log(sum(math.exp(v) for v in logits[b, t])) - logits[b, t, targets[b, t]]
             for b in range(2) for t in range(4) if targets[b, t] >= 0]
    assert loss == pytest.approx(sum(terms) / len(terms), rel=1e-12)
    dlogits = cross_entropy_backward(1.0, cache, logits.shape)
    assert not dlogits[0, 1].any() and not dlogits[1, 2].any()
    assert_grad(lambda: np.array(cross_entropy_forward(logits, targets)[0]), logits, dlogits, 1.0)


def test_soft_cross_entropy_is_a_loop_over_target_distributions_and_one_hot_is_the_hard_loss(rng):
    logits = rng.normal(size=(2, 4, 6))
    targets = np.array([[1, -1, 5, 0], [2, 2, -1, 3]])
    soft = rng.random(size=(2, 4, 6))
    soft /= soft.sum(-1, keepdims=True)
    loss, cache = cross_entropy_forward(logits, targets, soft=soft)
    terms = [sum(soft[b, t, v] * (math.log(sum(math.exp(u) for u in logits[b, t])) - logits[b, t, v])
                 for v in range(6)) for b in range(2) for t in range(4) if targets[b, t] >= 0]
    assert loss == pytest.approx(sum(terms) / len(terms), rel=1e-12)
    dlogits = cross_entropy_backward(1.0, cache, logits.shape)
    assert not dlogits[0, 1].any() and not dlogits[1, 2].any()
    assert_grad(lambda: np.array(cross_entropy_forward(logits, targets, soft=soft)[0]), logits, dlogits, 1.0)
    one_hot = np.eye(6)[np.maximum(targets, 0)]
    hard, hard_cache = cross_entropy_forward(logits, targets)
    soft_loss, soft_cache = cross_entropy_forward(logits, targets, soft=one_hot)
    assert soft_loss == pytest.approx(hard, rel=1e-12)
    np.testing.assert_allclose(cross_entropy_backward(1.0, soft_cache), cross_entropy_backward(1.0, hard_cache),
                               rtol=0, atol=1e-15)


# --------------------------------------------------------------------------- attention

B, T, C, H, L = 2, 6, 8, 2, 9
D = C // H


def attention_params(rng, relative=False):
    p = dict(w_qkv=rng.normal(size=(C, 3 * C)) * 0.5, b_qkv=rng.normal(size=3 * C) * 0.1,
             w_o=rng.normal(size=(C, C)) * 0.5, b_o=rng.normal(size=C) * 0.1)
    rel = rng.normal(size=(H, L, D)) if relative else None
    return p, rel


def rotate(x, positions, base=10000.0):
    """Rotary embedding of one vector per row, pair by pair (reference)."""
    out = np.empty_like(x)
    for t, pos in enumerate(positions):
        for i in range(x.shape[-1] // 2):
            a = pos * base ** (-2 * i / x.shape[-1])
            c, s = math.cos(a), math.sin(a)
            out[t, 2 * i] = x[t, 2 * i] * c - x[t, 2 * i + 1] * s
            out[t, 2 * i + 1] = x[t, 2 * i] * s + x[t, 2 * i + 1] * c
    return out


def reference_attention(x, p, rel, window=None, rope=False):
    """Causal multi-head attention with plain loops over batch, head, query and key."""
    out = np.zeros((B, T, C))
    for b in range(B):
        qkv = x[b] @ p["w_qkv"] + p["b_qkv"]
        heads = []
        for h in range(H):
            q, k, v = (qkv[:, j * C + h * D: j * C + (h + 1) * D] for j in range(3))
            if rope:
                q, k = rotate(q, range(T)), rotate(k, range(T))
            y = np.zeros((T, D))
            for i in range(T):
                keys = [j for j in range(i + 1) if window is None or j > i - window]
                logits = [(q[i] @ k[j] + (q[i] @ rel[h, L - 1 - (i - j)] if rel is not None else 0))
                          / math.sqrt(D) for j in keys]
                m = max(logits)
                w = [math.exp(a - m) for a in logits]
                y[i] = sum(wj / sum(w) * v[j] for wj, j in zip(w, keys))
            heads.append(y)
        out[b] = np.concatenate(heads, axis=1) @ p["w_o"] + p["b_o"]
    return out


@pytest.mark.parametrize("block", [64, 2, 4], ids=["one-block", "blocks-of-2", "blocks-of-4"])
@pytest.mark.parametrize("relative, window, rope", [
    (False, None, False), (True, None, False), (False, 3, False), (False, None, True), (True, 2, False)],
    ids=["causal", "relative", "local", "rope", "relative-local"])
def test_attention_forward_matches_a_loop_over_queries_and_keys(rng, relative, window, rope, block):
    p, rel = attention_params(rng, relative)
    x = rng.normal(size=(B, T, C))
    spec = AttentionSpec(H, rope=rope, window=window, query_block=block)
    out, cache = attention_forward(x, *p.values(), spec, rel=rel)
    np.testing.assert_allclose(out, reference_attention(x, p, rel, window, rope), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cache.probs.sum(-1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("block", [64, 4])
def test_soft_align_layer_matches_the_core_soft_align_attention(rng, block):
    p, _ = attention_params(rng)
    x = rng.normal(size=(B, T, C))
    spec = AttentionSpec(H, alpha=0.3, align_window=3, query_block=block)
    out, cache = attention_forward(x, *p.values(), spec)
    q, k, v = (x @ p["w_qkv"] + p["b_qkv"]).reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)
    y, w = soft_align_attention(q, k, v, alpha=0.3, window=3, return_weights=True)
    expected = y.transpose(0, 2, 1, 3).reshape(B, T, C) @ p["w_o"] + p["b_o"]
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cache.probs, w, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("T, S", [(1, 1), (5, 5), (3, 7), (6, 9)])
def test_skew_view_equals_the_padded_skew_on_the_causal_region(rng, T, S):
    x = rng.normal(size=(2, 3, T, S))
    causal = np.arange(S)[None, :] <= np.arange(T)[:, None] + (S - T)
    np.testing.assert_array_equal(skew_view(x)[..., causal], skew(x)[..., causal])
    dout = rng.normal(size=x.shape) * causal
    np.testing.assert_array_equal(skew_view_backward(dout), skew_backward(dout))


ATTENTION_CASES = {
    "causal": (AttentionSpec(H), False),
    "causal-blocks": (AttentionSpec(H, query_block=4), False),
    "local": (AttentionSpec(H, window=3), False),
    "local-blocks": (AttentionSpec(H, window=3, query_block=2), False),
    "rope": (AttentionSpec(H, rope=True), False),
    "rope-blocks": (AttentionSpec(H, rope=True, query_block=4), False),
    "relative": (AttentionSpec(H), True),
    "relative-blocks": (AttentionSpec(H, query_block=4), True),
    "relative-local": (AttentionSpec(H, window=2), True),
    "soft-align": (AttentionSpec(H, alpha=0.4, align_window=2), False),
    "soft-align-relative-blocks": (AttentionSpec(H, alpha=0.7, align_window=3, query_block=4), True),
}


@pytest.mark.parametrize("case", sorted(ATTENTION_CASES))
def test_attention_backward_matches_finite_differences(rng, case):
    spec, relative = ATTENTION_CASES[case]
    p, rel = attention_params(rng, relative)
    x = rng.normal(size=(B, T, C))

    def f():
        return attention_forward(x, *p.values(), spec, rel=rel)[0]

    out, cache = attention_forward(x, *p.values(), spec, rel=rel)
    dout = rng.normal(size=out.shape)
    dx, dw_qkv, db_qkv, dw_o, db_o, drel = attention_backward(dout, cache)
    assert_grad(f, x, dx, dout)
    for name, grad in zip(p, (dw_qkv, db_qkv, dw_o, db_o)):
        assert_grad(f, p[name], grad, dout)
    if relative:
        assert_grad(f, rel, drel, dout)
        assert not drel[:, :L - T].any()          # distances the window never reaches


# --------------------------------------------------------------------------- whole model

@pytest.mark.slow
@pytest.mark.parametrize("positional", ["sinusoidal", "rope", "relative"])
@pytest.mark.parametrize("attention", ["full", "local", "soft_align"])
def test_model_gradients_match_finite_differences(positional, attention):
    config = ModelConfig(vocab_size=11, d_model=8, n_layers=2, n_heads=2, d_ff=12, max_len=10,
                         positional=positional, attention=attention, window=3)
    rng = np.random.default_rng(7)
    model = init_model(config, rng, dtype=np.float64)
    for value in model.params.values():
        value += rng.normal(0, 0.3, value.shape)          # away from the tiny initial weights
    ids = rng.integers(0, 11, (2, 7))
    targets = rng.integers(-1, 11, (2, 7))                 # some -1: not counted
    loss, grads = model.loss_and_grads(ids, targets)
    assert loss == pytest.approx(model.loss(ids, targets), rel=1e-12)
    for name, value in model.params.items():
        assert grads[name].shape == value.shape
        assert_grad(lambda: np.array(model.loss(ids, targets)), value, grads[name], 1.0, entries=24)


def test_split_batch_gradients_equal_whole_batch_gradients():
    config = ModelConfig(vocab_size=13, d_model=16, n_layers=2, n_heads=2, d_ff=24, max_len=12,
                         positional="relative")
    model = init_model(config, np.random.default_rng(3), dtype=np.float64)
    rng = np.random.default_rng(4)
    ids, targets = rng.integers(0, 13, (5, 12)), rng.integers(-1, 13, (5, 12))
    loss1, g1 = model.loss_and_grads(ids, targets, workers=1)
    loss2, g2 = model.loss_and_grads(ids, targets, workers=2)
    assert loss1 == pytest.approx(loss2, rel=1e-12)
    for name in g1:
        np.testing.assert_allclose(g1[name], g2[name], rtol=1e-10, atol=1e-14)


def test_float32_model_keeps_float32_everywhere():
    config = ModelConfig(vocab_size=13, d_model=16, n_layers=2, n_heads=2, d_ff=24, max_len=12,
                         positional="relative", attention="soft_align", window=4)
    model = init_model(config, np.random.default_rng(3))
    ids = np.random.default_rng(4).integers(0, 13, (2, 12))
    logits, attention = model.forward(ids, return_attention=True)
    _, grads = model.loss_and_grads(ids[:, :-1], ids[:, 1:])
    assert logits.dtype == attention.dtype == np.float32
    assert {g.dtype for g in grads.values()} == {np.dtype(np.float32)}


# --------------------------------------------------------------------------- one attention

@pytest.mark.parametrize("positional", ["sinusoidal", "rope", "relative"])
@pytest.mark.parametrize("attention", ["full", "local", "soft_align"])
def test_model_attention_equals_the_public_sdpa_on_the_same_inputs(positional, attention):
    """The layer's output and probabilities equal ``scaled_dot_product_attention`` (or
    ``soft_align_attention``) called on the layer's own q, k, v, for every option."""
    from music_attn.core.attention import scaled_dot_product_attention
    from music_attn.core.positional import apply_rope, relative_logits

    rng = np.random.default_rng(0)
    B, T, C, H, L, W = 2, 70, 16, 2, 80, 9      # T > 64: several query blocks
    D = C // H
    spec = AttentionSpec(n_heads=H, rope=positional == "rope",
                         window=W if attention == "local" else None,
                         alpha=0.3 if attention == "soft_align" else None,
                         align_window=W if attention == "soft_align" else None)
    x, w_qkv, b_qkv = rng.normal(size=(B, T, C)), rng.normal(size=(C, 3 * C)) * 0.5, rng.normal(size=3 * C)
    w_o, b_o = rng.normal(size=(C, C)), rng.normal(size=C)
    rel = rng.normal(size=(H, L, D)) if positional == "relative" else None
    out, cache = attention_forward(x, w_qkv, b_qkv, w_o, b_o, spec, rel=rel)

    qkv = (x @ w_qkv + b_qkv).reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv
    if positional == "rope":
        q, k = apply_rope(q), apply_rope(k)
    bias = None if rel is None else relative_logits(q, rel) / math.sqrt(D)
    if attention == "soft_align" and positional == "sinusoidal":
        y, w = soft_align_attention(q, k, v, alpha=0.3, window=W, return_weights=True)
    elif attention == "soft_align":   # local on the layer's q, k; global on RoPE of the raw q, k
        yl, wl = scaled_dot_product_attention(q, k, v, causal=True, window=W, bias=bias,
                                              return_weights=True)
        yg, wg = scaled_dot_product_attention(apply_rope(qkv[0]), apply_rope(qkv[1]), v, causal=True,
                                              bias=bias, return_weights=True)
        y, w = 0.3 * yl + 0.7 * yg, 0.3 * wl + 0.7 * wg
    else:
        y, w = scaled_dot_product_attention(q, k, v, causal=True, window=spec.window, bias=bias,
                                            return_weights=True)
    expected = y.transpose(0, 2, 1, 3).reshape(B, T, C) @ w_o + b_o
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(cache.probs, w, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- decode step

def test_folded_layer_norm_then_linear_equals_the_two_layers():
    """layernorm_decode rows @ fold_layernorm(...) is linear(layernorm(x)), also for rows far
    from zero mean (the fold must centre them, not rely on a small mean)."""
    from music_attn.core.layers import decode_work, fold_layernorm, layernorm_decode
    rng = np.random.default_rng(0)
    B, C, N = 3, 16, 7
    x = rng.normal(size=(B, C)) * [[1.0], [30.0], [0.01]] + [[0.0], [500.0], [-2.0]]
    gamma, beta = rng.normal(size=C), rng.normal(size=C)
    w, b = rng.normal(size=(C, N)), rng.normal(size=N)
    expected = linear_forward(layernorm_forward(x, gamma, beta)[0], w, b)[0]
    work = decode_work(x, B, C, 4 * C, 2, 8, 5)
    got = layernorm_decode(x, work) @ fold_layernorm(gamma, beta, w, b)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_gelu_decode_is_twice_gelu_in_place():
    from music_attn.core.layers import gelu_decode
    x = np.linspace(-6, 6, 50).reshape(2, 25)
    expected = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    f = x.copy()
    assert gelu_decode(f, np.empty_like(f)) is f
    np.testing.assert_allclose(f, 2 * expected, rtol=1e-12, atol=1e-15)


def test_decode_attention_equals_sdpa_of_the_last_query():
    """One query against S cached keys with a bias equals the last row of causal SDPA; the
    output may land in a strided view."""
    from music_attn.core.attention import decode_attention, scaled_dot_product_attention
    rng = np.random.default_rng(1)
    B, H, S, D = 2, 3, 9, 4
    q, k, v = rng.normal(size=(B, H, 1, D)), rng.normal(size=(B, H, S, D)), rng.normal(size=(B, H, S, D))
    bias = rng.normal(size=(B, H, 1, S)) * 3
    expected = scaled_dot_product_attention(q, k, v, bias=bias)       # scale 1/sqrt(D) = 0.5 = 0.25 * 2
    wide = np.zeros((B, H * D + 1))
    out = wide[:, :H * D].reshape(B, H, 1, D)
    got = decode_attention(q * 0.25, k, v, bias=bias, scale=2.0, scores=np.empty((B, H, 1, S)),
                           stat=np.empty((B, H, 1, 1)), acc=np.empty((B, H, 1, D)), out=out)
    assert got is out
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    assert np.all(wide[:, -1] == 0)
