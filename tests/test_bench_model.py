"""What `music-attn bench model` counts: numpy calls, training FLOPs, the decode step's floors."""

import numpy as np

from music_attn.bench.model import _Counted, _decode_floors, _numpy_calls_per_token, _train_flops_per_token
from music_attn.core.model import ModelConfig, init_model


def test_counted_arrays_count_each_numpy_call_once():
    a = np.ones((3, 3)).view(_Counted)
    out = np.empty((3, 3))
    _Counted.calls = 0
    np.add(a, 1.0, out=out)          # a ufunc with out=
    np.sum(a, axis=0)                # a reduction
    np.matmul(a, a)                  # matmul is a ufunc too
    np.concatenate([a, a])           # an array function
    assert _Counted.calls == 4


def test_numpy_calls_per_decoded_token_do_not_depend_on_the_step():
    config = ModelConfig(vocab_size=30, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=64)
    model = init_model(config, np.random.default_rng(0), dtype=np.float32)
    one, two = _numpy_calls_per_token(model, n=4), _numpy_calls_per_token(model, n=9)
    assert one == two and one == int(one) and 10 < one < 200


def test_training_flops_per_token_by_hand():
    config = ModelConfig(vocab_size=10, d_model=4, n_layers=1, n_heads=2, d_ff=8, max_len=16,
                         positional="relative")
    # weights: 3*4*4 (qkv) + 4*4 (out) + 2*4*8 (feed-forward) + 4*10 (head) = 168
    # attention per token at seq 6: 3 products (scores, values, relative) x 2 x 3 keys x 4
    assert _train_flops_per_token(config, 6) == 3 * (2 * 168 + 3 * 2 * 3 * 4)
    sinusoidal = ModelConfig(**{**config.to_dict(), "positional": "sinusoidal"})
    assert _train_flops_per_token(sinusoidal, 6) == 3 * (2 * 168 + 2 * 2 * 3 * 4)


def test_decode_floors_read_every_weight_of_the_step_once():
    C, F, V, layers = 16, 40, 30, 3
    config = ModelConfig(vocab_size=V, d_model=C, n_layers=layers, n_heads=2, d_ff=F, max_len=32)
    model = init_model(config, np.random.default_rng(1), dtype=np.float32)
    products, calls, n_mats, mib, products16 = _decode_floors(model, 20, repeats=3)
    assert n_mats == 4 * layers + 1
    # rows: C+2 for a folded layer norm (its shift and the bias), C+1 / F+1 for a bias alone
    floats = layers * ((C + 2) * 3 * C + (C + 1) * C + (C + 2) * F + (F + 1) * C) + (C + 2) * V
    assert mib == floats * 4 / 2 ** 20
    assert products > 0 and calls > 0 and products16 > 0
