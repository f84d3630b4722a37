"""The harmonizer read in several keys: NLL and sampling against a float64 loop over keys and tokens."""

import numpy as np
import pytest

from conftest import reference_logits64
from music_attn.core.model import ModelConfig, init_model
from music_attn.music.tokenizers.grid import GridTokenizer
from music_attn.runtime.harmonize import condition_of, harmonization_nll, harmonize, sample_voices
from music_attn.runtime.keys import key_shifts

AHEAD = 8


@pytest.fixture(scope="module")
def model64():
    """A small random harmonizer in float64 (reads 8 sixteenths ahead; window 96 tokens)."""
    tok = GridTokenizer()
    config = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, d_ff=64,
                         max_len=96, period=16, condition=AHEAD)
    return init_model(config, np.random.default_rng(3), tokenizer=tok).astype(np.float64)


def _mixture_by_loop(model, grid, shifts):
    """p(. | tokens 0..j) (n-1, V) of the grid's token sequence: the mean over the keys
    ``shifts`` of each key's softmax moved back to the written key, written as loops."""
    tok = model.tokenizer
    low, high = tok.pitch_range
    pitch_of = {int(tok.grid_ids([[p, -1, -1, -1]])[0, 0]): p for p in range(low, high + 1)}
    id_of = {p: i for i, p in pitch_of.items()}
    ids = tok.encode_grid(grid).ids
    n, V = len(ids), tok.vocab_size
    per_key = []
    for s in shifts:
        moved, spelled = [], []
        for i in ids:                                  # the sequence in key s; -1: not spellable
            i = int(i)
            if i in pitch_of:
                moved.append(id_of.get(pitch_of[i] + s, -1))
            else:
                moved.append(i)
        dead = False
        for m in moved:
            dead = dead or m < 0
            spelled.append(not dead)
        seq = [m if m >= 0 else tok.rest_id for m in moved]
        soprano = [p + s if p >= 0 else -1 for p in grid[:, 0]]
        logits = reference_logits64(model, seq, condition_of(tok, np.array(soprano), n, AHEAD))
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        per_key.append((moved, spelled, probs, s))
    out = np.empty((n - 1, V))
    for j in range(n - 1):
        terms = []
        for moved, spelled, probs, s in per_key:
            if not spelled[j]:                         # its context holds a note it cannot spell
                continue
            back = np.zeros(V)
            for x in range(V):                         # key s's distribution over written tokens
                y = id_of.get(pitch_of[x] + s, -1) if x in pitch_of else x
                if y >= 0:
                    back[x] = probs[j, y]
            terms.append(back / back.sum())
        out[j] = np.mean(terms, axis=0)
    return out


def _nll_by_loop(model, grid, shifts):
    """-log p of each lower-voice cell of the grid under :func:`_mixture_by_loop`."""
    q = _mixture_by_loop(model, grid, shifts)
    ids = model.tokenizer.encode_grid(grid).ids
    return np.array([-np.log(q[j, ids[j + 1]]) for j in range(len(q)) if j % 4 != 0])


def _grid(rng, steps, bass_low=False, soprano_top=False):
    grid = np.column_stack([rng.integers(62, 80, steps), rng.integers(55, 70, steps),
                            rng.integers(48, 62, steps), rng.integers(38, 55, steps)])
    if bass_low:
        grid[7, 3] = 36                                # a semitone down cannot spell it
    if soprano_top:
        grid[3, 0] = 81                                # the tune does not fit a semitone up
    grid[5, 2] = -1                                    # a rest
    return grid


def test_key_shifts_are_the_written_key_then_semitones_either_side():
    assert key_shifts(1) == (0,)
    assert key_shifts(3) == (0, -1, 1)
    assert key_shifts(5) == (0, -1, 1, -2, 2)
    for bad in (0, 2, 13, -1, True, 3.0, "3"):
        with pytest.raises(ValueError, match="keys must be an odd integer"):
            key_shifts(bad)


@pytest.mark.parametrize("bass_low, soprano_top, shifts", [
    (False, False, (0, -1, 1)),
    (True, False, (0, -1, 1)),                         # key -1 drops out after the low bass note
    (False, True, (0, -1)),                            # key +1 is never read
])
def test_nll_in_three_keys_is_the_mixture_of_a_float64_loop(model64, bass_low, soprano_top, shifts):
    grid = _grid(np.random.default_rng(11), 20, bass_low, soprano_top)
    nll = _nll_by_loop(model64, grid, shifts)
    assert harmonization_nll(grid, model=model64, keys=3) == pytest.approx(nll.mean(), rel=1e-9)


def test_sampling_draws_each_cell_from_the_mixture_the_nll_scores(model64):
    """A lower-voice cell is a pitch or a rest: the mixture renormalised over those tokens."""
    tok = model64.tokenizer
    cells = [int(tok.grid_ids([[p, -1, -1, -1]])[0, 0]) for p in range(tok.pitch_range[0], tok.pitch_range[1] + 1)]
    cells.append(tok.rest_id)
    soprano = np.repeat([72, 74, 76, 77, 79, 77, 76, 74, 72, 71], 2)          # 20 steps, 81 tokens < 96
    grids, logp = sample_voices(model64, soprano, num_samples=3, rng=4, temperature=1.0, rules=False, keys=3)
    assert ((grids[:, :, 1:] == -1) | (grids[:, :, 1:] >= tok.pitch_range[0])).all()
    for grid, lp in zip(grids, logp):
        q = _mixture_by_loop(model64, grid, (0, -1, 1))
        ids = tok.encode_grid(grid).ids
        want = sum(np.log(q[j, ids[j + 1]] / q[j, cells].sum()) for j in range(len(q)) if j % 4 != 0)
        assert lp == pytest.approx(want, rel=1e-9)


def test_a_bad_keys_value_fails_before_any_work(tmp_path):
    missing = tmp_path / "absent.mid"
    with pytest.raises(ValueError, match="keys must be an odd integer"):
        harmonize(missing, keys=4)


@pytest.mark.parametrize("bass_low, soprano_top", [(True, False), (False, True)])
def test_distillation_targets_are_the_one_hot_mixed_with_the_teachers_keys(model64, bass_low, soprano_top):
    """scripts/train_harmonizer.py --teacher: the target of each cell against the float64 loop."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from train_harmonizer import teacher_targets

    tok = model64.tokenizer
    grid = _grid(np.random.default_rng(13), 20, bass_low, soprano_top)
    ids = tok.encode_grid(grid).ids.astype(np.int64)
    cond = condition_of(tok, grid[:, 0], len(ids), AHEAD)
    targets = ids[1:].copy()
    targets[::4] = -1                                  # the soprano cells are not scored
    soft = teacher_targets(model64, (0, -1, 1), ids[None, :-1], targets[None], cond[None, :-1], 0.6)[0]
    q = _mixture_by_loop(model64, grid, (0, -1) if soprano_top else (0, -1, 1))
    want = 0.4 * np.eye(tok.vocab_size)[ids[1:]] + 0.6 * q
    counted = targets >= 0
    np.testing.assert_allclose(soft[counted], want[counted], rtol=1e-9, atol=1e-12)
