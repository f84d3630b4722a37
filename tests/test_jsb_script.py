"""scripts/jsb_chorales.py: the transposition mixture's NLL and widening a checkpoint's window."""

import sys
from pathlib import Path

import numpy as np
import pytest

from music_attn.core.model import ModelConfig, init_model
from music_attn.music.tokenizers import GridTokenizer
from music_attn.runtime.checkpoint import save_checkpoint
from music_attn.runtime.windows import sequence_nll

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import jsb_chorales as jsb  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return GridTokenizer()


def _model(tok, *, max_len=64, period=0, seed=0):
    config = ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=2, n_heads=2, d_ff=32,
                         max_len=max_len, period=period)
    model = init_model(config, np.random.default_rng(seed), tokenizer=tok)
    rng = np.random.default_rng(seed + 1)
    for value in model.params.values():
        value += rng.normal(0, 0.3, value.shape).astype(np.float32)
    return model


def _probs64(model, ids):
    """float64 softmax of the model's logits over one short sequence: (T, V)."""
    logits = model.forward(np.asarray(ids)[None, :])[0].astype(np.float64)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_a_mixture_of_the_untransposed_model_alone_is_the_plain_nll(tok):
    model = _model(tok)
    grid = np.random.default_rng(0).integers(50, 70, (12, 4))
    ids = tok.encode_grid(grid).ids
    np.testing.assert_array_equal(jsb.mixture_nll(model, ids, [0], 64, 32),
                                  sequence_nll(model, ids, window=64, stride=32))


def test_the_mixture_averages_the_keys_whose_past_fits_and_drops_the_others(tok):
    """Two keys, 0 and +1; the soprano reaches the top of the range (81) at step 2, so from
    there on the +1 reading leaves the mixture: checked against probabilities worked out
    from two plain forwards."""
    model = _model(tok)
    grid = np.array([[72, 64, 55, 48], [76, 67, 60, 43], [81, 65, 57, 41], [79, 64, 55, 40]])
    ids = tok.encode_grid(grid).ids                             # [BOS] + 16, fits the window
    up = tok.encode_grid(np.where(grid >= 0, grid + 1, -1).clip(max=81)).ids
    p0, p1 = _probs64(model, ids), _probs64(model, up)
    expected = []
    for t in range(1, ids.size):                                # target t from position t - 1
        a = p0[t - 1, ids[t]]
        context_fits = grid.reshape(-1)[:t - 1].max(initial=0) < 81
        target_fits = grid.reshape(-1)[t - 1] < 81
        if context_fits:
            b = p1[t - 1, ids[t] + 1] if target_fits else 0.0
            expected.append(-np.log((a + b) / 2))
        else:
            expected.append(-np.log(a))
    got = jsb.mixture_nll(model, ids, [0, 1], 64, 32)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_widening_a_checkpoint_keeps_its_predictions_on_what_it_could_read(tok, tmp_path):
    small = _model(tok, max_len=32)
    save_checkpoint(tmp_path / "small.npz", small)
    wide = _model(tok, max_len=64, period=4, seed=9)
    jsb._load_weights(wide, tmp_path / "small.npz")
    ids = tok.encode_grid(np.random.default_rng(3).integers(45, 75, (7, 4))).ids     # 29 tokens
    np.testing.assert_allclose(wide.forward(ids[None]), small.forward(ids[None]), atol=1e-5)
    assert not wide.params["period_emb"].any()


def test_widening_refuses_a_checkpoint_of_another_size(tok, tmp_path):
    save_checkpoint(tmp_path / "other.npz", _model(tok, max_len=128))
    with pytest.raises(SystemExit, match="smaller-window"):
        jsb._load_weights(_model(tok, max_len=64), tmp_path / "other.npz")


def test_folding_snapshots_gives_their_float64_mean_and_survives_a_save(tok, tmp_path):
    """Stochastic weight averaging: the running mean after n folds is the plain mean of the
    n snapshots (worked out in float64 from the snapshots), and its float64 file reloads
    bit for bit, so a resumed run folds on from the same mean."""
    snapshots = [_model(tok, seed=s) for s in (1, 2, 3, 4)]
    mean = snapshots[0].astype(np.float64)
    count = 0
    for snap in snapshots:
        count = jsb.fold(mean, snap, count)
    assert count == 4
    for name, value in mean.params.items():
        expected = np.mean([s.params[name].astype(np.float64) for s in snapshots], axis=0)
        np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-15)
    save_checkpoint(tmp_path / "m.average.npz", mean, metrics={"averaged_from": 0, "snapshots": count})
    again, info = jsb._averaged(tmp_path / "m.average.npz")
    assert info == {"averaged_from": 0, "snapshots": 4}
    for name, value in mean.params.items():
        assert again.params[name].dtype == np.float64
        np.testing.assert_array_equal(again.params[name], value)
    assert jsb._averaged(tmp_path / "absent.npz") == (None, {})
