"""The PyTorch bridge: same logits as numpy for every option, round trips, training in torch
(the same run as numpy's, and the same weights on 2 processes as on 1). Skipped without torch."""

import itertools
import json
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
mp = pytest.importorskip("torch.multiprocessing")

from music_attn.core.model import ModelConfig, init_model  # noqa: E402
from music_attn.interop.torch_bridge import from_torch, to_torch, train_torch  # noqa: E402
from music_attn.runtime.checkpoint import load_checkpoint  # noqa: E402
from music_attn.training.train import TrainConfig, TrainState, train, train_state_from_checkpoint  # noqa: E402

OPTIONS = list(itertools.product(("sinusoidal", "rope", "relative"), ("full", "local", "soft_align")))
TRAIN = TrainConfig(steps=4, batch_size=4, seq_len=16, lr=3e-3, min_lr=3e-4, warmup=2,
                    eval_every=2, checkpoint_every=3, transpose=None, seed=5)


def _model(positional="relative", attention="full", dtype=np.float64, seed=0, period=0):
    config = ModelConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=32,
                         positional=positional, attention=attention, window=5, alpha=0.3,
                         period=period)
    model = init_model(config, np.random.default_rng(seed), dtype=dtype)
    rng = np.random.default_rng(seed + 1)   # move the weights off their tiny initial values
    for name, value in model.params.items():
        model.params[name] = (value + rng.normal(0, 0.2, value.shape)).astype(dtype)
    return model


def _sequences(n=5, length=60, seed=0):
    rng = np.random.default_rng(seed)
    return [np.tile(rng.integers(3, 40, 7), length // 7).astype(np.int32) for _ in range(n)]


@pytest.mark.parametrize("positional,attention", OPTIONS, ids=lambda x: x)
def test_torch_logits_and_attention_equal_numpy_for_every_option(positional, attention):
    model = _model(positional, attention)
    ids = np.random.default_rng(2).integers(0, 40, (2, 30))
    ours, our_att = model.forward(ids, return_attention=True)
    with torch.no_grad():
        logits, att = to_torch(model)(torch.as_tensor(ids), return_attention=True)
    np.testing.assert_allclose(logits.numpy(), ours, atol=1e-5, rtol=0)
    np.testing.assert_allclose(att.numpy(), our_att, atol=1e-6, rtol=0)


def test_float32_torch_logits_agree_with_float32_numpy():
    model = _model("rope", "soft_align", dtype=np.float32)
    ids = np.random.default_rng(3).integers(0, 40, (2, 32))
    with torch.no_grad():
        theirs = to_torch(model)(torch.as_tensor(ids)).numpy()
    np.testing.assert_allclose(theirs, model.forward(ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("period", [0, 4])
def test_torch_autograd_gradient_equals_numpy_backward(period):
    model = _model("relative", "soft_align", period=period)
    ids = np.random.default_rng(4).integers(0, 40, (2, 20))
    targets = np.random.default_rng(5).integers(0, 40, (2, 20))
    loss, grads = model.loss_and_grads(ids, targets)
    module = to_torch(model)
    logits = module(torch.as_tensor(ids))
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 40), torch.as_tensor(targets).reshape(-1))
    ref.backward()
    assert ref.item() == pytest.approx(loss, abs=1e-10)
    for name, g in grads.items():
        np.testing.assert_allclose(module.p(name).grad.numpy(), g, atol=1e-9, rtol=0, err_msg=name)


def test_from_torch_returns_the_same_model_and_copies_the_weights():
    model = _model("sinusoidal", "local")
    module = to_torch(model)
    back = from_torch(module)
    assert back.config == model.config
    assert all(np.array_equal(back.params[k], model.params[k]) for k in model.params)
    with torch.no_grad():
        module.p("head.b").add_(1.0)
    assert np.array_equal(back.params["head.b"], model.params["head.b"])   # a copy, not a view


def test_from_torch_refuses_a_module_of_another_architecture():
    with pytest.raises(TypeError, match="TorchTransformer"):
        from_torch(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("period", [0, 4])
def test_torch_training_follows_the_numpy_run_step_for_step(period):
    ours, theirs = _model(seed=3, period=period), _model(seed=3, period=period)
    seqs, val = _sequences(), _sequences(2, seed=9)
    state_np = train(ours, seqs, TRAIN, val_sequences=val, progress=False)
    state_t = train_torch(theirs, seqs, TRAIN, val_sequences=val, progress=False)
    for name in ours.params:
        np.testing.assert_allclose(theirs.params[name], ours.params[name], atol=1e-9, rtol=0, err_msg=name)
    assert [r["step"] for r in state_t.history] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["loss"] for r in state_t.history],
                               [r["loss"] for r in state_np.history], atol=1e-9)
    assert state_t.history[-1]["val_loss"] == pytest.approx(state_np.history[-1]["val_loss"], abs=1e-9)


def test_torch_checkpoint_loads_in_numpy_and_resumes_exactly(tmp_path):
    path = tmp_path / "torch.npz"
    whole = _model(seed=4)
    train_torch(whole, _sequences(), TRAIN, checkpoint=tmp_path / "whole.npz", progress=False)
    half = _model(seed=4)
    train_torch(half, _sequences(), TRAIN, checkpoint=path, stop_after=2, progress=False)
    ckpt = load_checkpoint(path)                          # the numpy loader reads it
    assert ckpt.train_state["meta"]["step"] == 2
    state = train_state_from_checkpoint(ckpt.model, ckpt.train_state)
    train_torch(ckpt.model, _sequences(), TRAIN, state=state, checkpoint=path, progress=False)
    for name in whole.params:
        np.testing.assert_allclose(ckpt.model.params[name], whole.params[name], atol=1e-12, rtol=0)
    np.testing.assert_allclose(load_checkpoint(path).model.params["head.w"], whole.params["head.w"],
                               atol=1e-12, rtol=0)


def test_a_numpy_checkpoint_resumes_in_torch_as_if_numpy_had_gone_on(tmp_path):
    whole = _model(seed=7)
    train(whole, _sequences(), TRAIN, progress=False)
    half = _model(seed=7)
    train(half, _sequences(), TRAIN, checkpoint=tmp_path / "np.npz", stop_after=2, progress=False)
    ckpt = load_checkpoint(tmp_path / "np.npz")
    state = train_state_from_checkpoint(ckpt.model, ckpt.train_state)
    train_torch(ckpt.model, _sequences(), TRAIN, state=state, progress=False)
    for name in whole.params:
        np.testing.assert_allclose(ckpt.model.params[name], whole.params[name], atol=1e-9, rtol=0)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out):
    """One of ``world`` processes training the same model (gloo on localhost)."""
    import torch.distributed as dist
    from music_attn.interop import torch_bridge
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    rows, loss = [], torch_bridge._loss

    def counting_loss(net, ids, *args):                   # record the rows this process trains on
        rows.append(int(ids.shape[0]))
        return loss(net, ids, *args)
    torch_bridge._loss = counting_loss
    try:
        torch.set_num_threads(1)
        train_torch(_model(seed=6), _sequences(), TRAIN, checkpoint=out, progress=False)
        np.save(f"{out}.rows{rank}.npy", rows)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_give_the_weights_of_one_process_with_the_same_global_batch(tmp_path):
    # float64: the key biases get float-noise gradients (softmax ignores them) that
    # Adam's normalisation would blow up to lr-sized steps in float32
    one = _model(seed=6)
    train_torch(one, _sequences(), TRAIN, progress=False)
    out = tmp_path / "ddp.npz"
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True,
                       start_method="fork")        # fork: the workers need not import torch again
    two = load_checkpoint(out).model                      # written by rank 0, read by numpy
    for rank in range(2):                                 # each process trained on half of each batch
        assert np.load(f"{out}.rows{rank}.npy").tolist() == [TRAIN.batch_size // 2] * TRAIN.steps
    moved = max(np.abs(one.params[k] - _model(seed=6).params[k]).max() for k in one.params)
    assert moved > 1e-3                                   # training changed the weights
    for name in one.params:
        np.testing.assert_allclose(two.params[name], one.params[name], atol=1e-9, rtol=0, err_msg=name)


@pytest.mark.slow
def test_cli_backend_torch_writes_a_checkpoint_that_inspect_reads(tmp_path, capsys):
    from music_attn.cli import main
    from music_attn.training.data import shipped_melodies
    out = tmp_path / "t.npz"
    assert main(["train", str(shipped_melodies()[0].parent), "-o", str(out), "--backend", "torch",
                 "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--d-model", "8",
                 "--layers", "1", "--heads", "2", "--quiet"]) == 0
    assert load_checkpoint(out).train_state["meta"]["step"] == 2
    assert main(["inspect", str(shipped_melodies()[0]), "-m", str(out), "--json",
                 str(tmp_path / "m.json"), "-o", str(tmp_path / "m.html")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["notes"]


@pytest.mark.slow
def test_torchrun_two_processes_write_the_checkpoint_of_a_one_process_cli_run(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from music_attn.cli import main
    from music_attn.training.data import shipped_melodies
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("no torchrun on PATH")
    args = ["train", str(shipped_melodies()[0].parent), "--backend", "torch", "--steps", "3",
            "--batch-size", "4", "--seq-len", "16", "--d-model", "8", "--layers", "1", "--heads", "2",
            "--no-transpose", "--quiet"]
    assert main(args + ["-o", str(tmp_path / "one.npz")]) == 0
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                          "--master_port", str(_free_port()), "-m", "music_attn", *args,
                          "-o", str(tmp_path / "two.npz")],
                         cwd=root, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("wrote ") == 1                 # only rank 0 reports and saves
    one, two = load_checkpoint(tmp_path / "one.npz").model, load_checkpoint(tmp_path / "two.npz").model
    # float32: compare the functions (the key biases, which softmax ignores, drift with float noise)
    ids = np.random.default_rng(0).integers(0, one.config.vocab_size, (2, 16))
    np.testing.assert_allclose(two.forward(ids), one.forward(ids), atol=1e-5, rtol=0)
    np.testing.assert_allclose(two.params["head.w"], one.params["head.w"], atol=1e-6, rtol=0)
