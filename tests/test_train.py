"""Training: schedule, clipping, AdamW, determinism, exact resume, Ctrl-C, crash-safe saves, CLI."""

import math
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from music_attn.runtime.checkpoint import load_checkpoint, save_checkpoint
from music_attn.cli import main
from music_attn.core.model import ModelConfig, init_model
from music_attn.training.train import (
    AdamW, TrainConfig, TrainState, clip_grads, lr_at, train, train_state_from_checkpoint,
)

CONFIG = ModelConfig(vocab_size=12, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=32,
                     positional="relative")
TRAIN = TrainConfig(steps=12, batch_size=4, seq_len=16, lr=3e-3, min_lr=3e-4, warmup=3,
                    eval_every=4, checkpoint_every=5, transpose=None, seed=11)


def sequences(n=6, length=90, seed=0):
    """Sequences with structure to learn: a repeated random motif per sequence."""
    rng = np.random.default_rng(seed)
    return [np.tile(rng.integers(3, 12, 5), length // 5).astype(np.int32) for _ in range(n)]


def fresh(config=TRAIN):
    rng = np.random.default_rng(config.seed)
    model = init_model(CONFIG, rng)
    return model, TrainState(model, config, rng)


def same_weights(a, b):
    return all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


# --------------------------------------------------------------------------- pieces

def test_learning_rate_warms_up_linearly_then_follows_a_cosine_to_min_lr():
    c = TrainConfig(steps=110, lr=1.0, min_lr=0.1, warmup=10)
    assert lr_at(0, c) == pytest.approx(0.1)
    assert lr_at(4, c) == pytest.approx(0.5)
    assert lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(60, c) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, c) == pytest.approx(0.1)
    assert lr_at(500, c) == pytest.approx(0.1)


def test_clipping_scales_the_global_norm_down_to_the_limit_only_when_above():
    rng = np.random.default_rng(0)
    grads = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=5)}
    norm = math.sqrt(sum((g ** 2).sum() for g in grads.values()))
    direction = {k: g / norm for k, g in grads.items()}
    assert clip_grads(grads, 1.0) == pytest.approx(norm)
    assert math.sqrt(sum((g ** 2).sum() for g in grads.values())) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(grads["a"], direction["a"], rtol=1e-5)
    small = {"a": np.full(2, 0.1)}
    clip_grads(small, 1.0)
    np.testing.assert_array_equal(small["a"], [0.1, 0.1])


def test_adamw_steps_match_the_formula_by_hand():
    params = {"w": np.array([[1.0, -2.0]]), "b": np.array([0.5])}
    opt = AdamW(params, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    g1 = {"w": np.array([[0.2, -0.4]]), "b": np.array([1.0])}
    opt.step(params, {k: v.copy() for k, v in g1.items()}, lr=0.01)
    # step 1: m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps); decay only on w
    np.testing.assert_allclose(params["w"], [[1.0 * (1 - 0.001) - 0.01, -2.0 * (1 - 0.001) + 0.01]],
                               rtol=1e-6)
    np.testing.assert_allclose(params["b"], [0.5 - 0.01], rtol=1e-6)
    g2 = {"w": np.array([[0.0, 0.0]]), "b": np.array([-1.0])}
    opt.step(params, g2, lr=0.01)
    m = 0.9 * 0.1 * 1.0 + 0.1 * -1.0                 # m after two steps
    v = 0.99 * 0.01 * 1.0 + 0.01 * 1.0
    expected = 0.49 - 0.01 * (m / (1 - 0.9 ** 2)) / (math.sqrt(v / (1 - 0.99 ** 2)) + 1e-8)
    np.testing.assert_allclose(params["b"], [expected], rtol=1e-6)


# --------------------------------------------------------------------------- runs

def test_training_reduces_the_loss_on_a_small_overfit():
    model, state = fresh(TrainConfig(steps=60, batch_size=4, seq_len=16, lr=1e-2, min_lr=1e-3,
                                     warmup=5, eval_every=0, transpose=None, seed=1))
    seqs = sequences(2)
    before = model.loss(np.stack([s[:16] for s in seqs]), np.stack([s[1:17] for s in seqs]))
    state = train(model, seqs, state.config, state=state, progress=False)
    after = model.loss(np.stack([s[:16] for s in seqs]), np.stack([s[1:17] for s in seqs]))
    assert after < 0.2 * before
    assert state.history[-1]["loss"] < state.history[0]["loss"]


def test_same_seed_gives_bit_identical_weights():
    (a, sa), (b, sb) = fresh(), fresh()
    train(a, sequences(), TRAIN, state=sa, progress=False)
    train(b, sequences(), TRAIN, state=sb, progress=False)
    assert same_weights(a, b)
    c, sc = fresh(TrainConfig(**{**TRAIN.to_dict(), "seed": 12}))
    train(c, sequences(), sc.config, state=sc, progress=False)
    assert not same_weights(a, c)


def test_resume_continues_exactly_where_training_stopped(tmp_path):
    seqs, val = sequences(), sequences(2, seed=9)
    whole, state = fresh()
    train(whole, seqs, TRAIN, state=state, val_sequences=val, progress=False)

    path = tmp_path / "run.npz"
    half, state = fresh()
    train(half, seqs, TRAIN, state=state, val_sequences=val, checkpoint=path, stop_after=6,
          progress=False)
    ckpt = load_checkpoint(path)
    resumed = ckpt.model
    state = train_state_from_checkpoint(resumed, ckpt.train_state)
    assert state.step == 6
    train(resumed, seqs, TRAIN, state=state, val_sequences=val, progress=False)
    assert same_weights(whole, resumed)
    assert load_checkpoint(path).train_state["meta"]["step"] == 6


def test_checkpoints_carry_the_validation_nll_of_the_weights_they_hold(tmp_path):
    seqs, val = sequences(), sequences(2, length=15, seed=9)          # each fits one window of 16
    model, state = fresh()
    path = tmp_path / "run.npz"
    train(model, seqs, TRAIN, state=state, val_sequences=val, checkpoint=path, progress=False)
    saved = load_checkpoint(path).model
    assert saved.metrics["validation_step"] == TRAIN.steps
    # recomputed independently: the mean NLL of every validation token after the first, one full forward each
    nll = []
    for seq in val:
        logits = saved.forward(seq[None, :-1].astype(np.int64))[0].astype(np.float64)   # (T, V)
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        nll.extend(logz - logits[np.arange(len(seq) - 1), seq[1:]])
    assert saved.metrics["validation_tokens"] == len(nll)
    assert saved.metrics["validation_nats_per_token"] == pytest.approx(np.mean(nll), rel=1e-5)


def test_ctrl_c_finishes_the_step_saves_and_resumes_exactly(tmp_path):
    seqs = sequences()
    whole, state = fresh()
    train(whole, seqs, TRAIN, state=state, progress=False)

    model, state = fresh()
    real, calls = model.loss_and_grads, []
    before = signal.getsignal(signal.SIGINT)     # default, or ignored when the suite runs in the background

    def interrupted_on_third_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)       # as if the user pressed Ctrl-C mid-step
        return real(*args, **kwargs)
    model.loss_and_grads = interrupted_on_third_call
    path = tmp_path / "stopped.npz"
    state = train(model, seqs, TRAIN, state=state, checkpoint=path, progress=False)
    assert state.interrupted and state.step == 3
    assert signal.getsignal(signal.SIGINT) is before                    # the caller's handler is back
    ckpt = load_checkpoint(path)
    resumed = ckpt.model
    train(resumed, seqs, TRAIN, state=train_state_from_checkpoint(resumed, ckpt.train_state),
          progress=False)
    assert same_weights(whole, resumed)


def test_time_limit_stops_the_run_and_saves_it(tmp_path):
    model, state = fresh()
    path = tmp_path / "timed.npz"
    state = train(model, sequences(), TRAIN, state=state, checkpoint=path, time_limit=0.0,
                  progress=False)
    assert state.step == 0 and not state.interrupted
    assert load_checkpoint(path).train_state["meta"]["step"] == 0


def test_a_kill_in_the_middle_of_a_save_leaves_the_last_checkpoint_intact(tmp_path):
    model, _ = fresh()
    path = tmp_path / "last.npz"
    save_checkpoint(path, model)
    script = textwrap.dedent("""
        import os, signal, sys
        import numpy.lib.format as fmt
        from music_attn.runtime.checkpoint import load_checkpoint, save_checkpoint
        model = load_checkpoint(sys.argv[1]).model
        for p in model.params.values():
            p += 1.0
        real, written = fmt.write_array, []
        def write_then_die(*args, **kwargs):
            written.append(1)
            if len(written) == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        fmt.write_array = write_then_die
        save_checkpoint(sys.argv[1], model)
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())    # the save was under way
    assert same_weights(load_checkpoint(path).model, model)


# --------------------------------------------------------------------------- command line

@pytest.fixture
def midi_folder(tmp_path, monkeypatch):
    from midi_factory import random_tune, save
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "tunes"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        save(random_tune(rng, n_bars=6)[0], folder / f"tune{i}.mid")
    return folder


def test_train_command_writes_a_checkpoint_and_resumes_it(midi_folder, tmp_path, capsys):
    out = tmp_path / "small.npz"
    args = ["train", str(midi_folder), "-o", str(out), "--d-model", "16", "--layers", "1",
            "--heads", "2", "--seq-len", "32", "--batch-size", "2", "--eval-every", "2", "--quiet"]
    assert main(args + ["--steps", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    first = load_checkpoint(out)
    assert first.train_state["meta"]["step"] == 3
    assert first.model.tokenizer is not None
    assert main(args + ["--steps", "5", "--resume"]) == 0
    second = load_checkpoint(out)
    assert second.train_state["meta"]["step"] == 5
    assert len(second.train_state["meta"]["history"]) == 5


def test_train_command_on_a_missing_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.npz"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nowhere" in err
    assert not (tmp_path / "x.npz").exists()
