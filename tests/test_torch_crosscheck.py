"""Cross-checks against torch's scaled_dot_product_attention and nn.MultiheadAttention.

Skipped when torch is not installed. Torch is an independent implementation, so these
tests compare two codes that share nothing but the mathematics.
"""

import numpy as np
import pytest

from music_attn.core.attention import (
    attention_mask,
    compute_qkv,
    multi_head_attention,
    scaled_dot_product_attention as sdpa,
)
from music_attn.core.positional import apply_rope

torch = pytest.importorskip("torch")
F = torch.nn.functional


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def rand(rng, *shape, dtype=np.float64):
    return rng.normal(size=shape).astype(dtype)


@pytest.mark.parametrize("block_size", [None, 16])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_matches_torch_float64(causal, block_size):
    rng = np.random.default_rng(0)
    q, k, v = rand(rng, 2, 4, 50, 16), rand(rng, 2, 4, 50, 16), rand(rng, 2, 4, 50, 8)
    ref = F.scaled_dot_product_attention(t(q), t(k), t(v), is_causal=causal).numpy()
    np.testing.assert_allclose(sdpa(q, k, v, causal=causal, block_size=block_size), ref,
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("block_size", [None, 32])
def test_sdpa_matches_torch_float32_causal(block_size):
    rng = np.random.default_rng(1)
    q, k, v = (rand(rng, 1, 8, 300, 64, dtype=np.float32) for _ in range(3))
    ref = F.scaled_dot_product_attention(t(q), t(k), t(v), is_causal=True).numpy()
    out = sdpa(q, k, v, causal=True, block_size=block_size)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("T,S", [(5, 12), (12, 12)])
@pytest.mark.parametrize("window", [None, 4])
def test_end_aligned_causal_and_window_match_torch_with_explicit_mask(T, S, window):
    # torch's is_causal is aligned to the top-left when T != S; an explicit bool mask is not
    rng = np.random.default_rng(2)
    q, k, v = rand(rng, 3, T, 8), rand(rng, 3, S, 8), rand(rng, 3, S, 5)
    mask = attention_mask(T, S, causal=True, window=window)
    ref = F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=t(mask)).numpy()
    np.testing.assert_allclose(sdpa(q, k, v, causal=True, window=window), ref, rtol=1e-10)


def test_mask_scale_and_bias_match_torch():
    rng = np.random.default_rng(3)
    q, k, v = rand(rng, 2, 7, 6), rand(rng, 2, 9, 6), rand(rng, 2, 9, 4)
    mask = rng.random((7, 9)) < 0.7
    mask[:, 0] = True
    bias = rand(rng, 7, 9)
    ref = F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=t(np.where(mask, bias, -np.inf)),
                                         scale=0.2).numpy()
    out = sdpa(q, k, v, mask=mask, bias=bias, scale=0.2)
    np.testing.assert_allclose(out, ref, rtol=1e-10)
    np.testing.assert_allclose(sdpa(q, k, v, mask=mask, bias=bias, scale=0.2, block_size=3), ref,
                               rtol=1e-10)


@pytest.mark.parametrize("n_heads", [1, 2, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_multi_head_with_projections_matches_nn_multihead_attention(n_heads, causal):
    C, T = 8, 6
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(C, n_heads, bias=False, batch_first=True).double()
    W_in = mha.in_proj_weight.detach().numpy()                   # (3C, C): rows q, k, v
    W_o = mha.out_proj.weight.detach().numpy()                   # (C, C)
    X = rand(np.random.default_rng(4), T, C)
    # torch's attn_mask: True = NOT allowed (the opposite of ours)
    tmask = t(~attention_mask(T, causal=True)) if causal else None
    ref, _ = mha(t(X)[None], t(X)[None], t(X)[None], attn_mask=tmask,
                     average_attn_weights=False)
    Q, K, V = compute_qkv(X, W_in[:C].T, W_in[C:2 * C].T, W_in[2 * C:].T)
    mask = attention_mask(T, causal=True) if causal else None
    out = multi_head_attention(Q, K, V, n_heads, mask=mask) @ W_o.T   # W_O mixes the heads
    np.testing.assert_allclose(out, ref[0].detach().numpy(), rtol=1e-10, atol=1e-12)


def test_fully_masked_query_gives_zeros_where_torch_mha_gives_nan():
    rng = np.random.default_rng(5)
    q, k, v = rand(rng, 3, 4), rand(rng, 3, 4), rand(rng, 3, 4)
    mask = np.ones((3, 3), bool)
    mask[1] = False
    out = sdpa(q, k, v, mask=mask)
    assert np.all(out[1] == 0) and np.isfinite(out).all()
    ok = F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=t(mask)).numpy()
    np.testing.assert_allclose(out[[0, 2]], ok[[0, 2]], rtol=1e-10)


def test_rope_matches_a_complex_number_rotation_in_torch():
    # pairs (x[2i], x[2i+1]) as complex numbers multiplied by exp(i * pos * theta_i)
    rng = np.random.default_rng(6)
    x, pos = rand(rng, 2, 10, 8), np.arange(10) + 3
    theta = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    z = torch.view_as_complex(t(x).reshape(2, 10, 4, 2).contiguous())
    rot = torch.polar(torch.ones(10, 4, dtype=torch.float64), t(pos.astype(float))[:, None] * theta)
    ref = torch.view_as_real(z * rot).reshape(2, 10, 8).numpy()
    np.testing.assert_allclose(apply_rope(x, pos), ref, rtol=1e-12, atol=1e-12)
