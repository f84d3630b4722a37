"""The numpy model against the same architecture written independently in torch (skipped without torch)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from music_attn.bench.torch_ref import TorchModel  # noqa: E402
from music_attn.core.model import ModelConfig, init_model  # noqa: E402


def _model(positional, seed=0):
    config = ModelConfig(vocab_size=50, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_len=64,
                         positional=positional)
    model = init_model(config, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)   # move the weights off their tiny initial values
    for name, value in model.params.items():
        model.params[name] = (value + rng.normal(0, 0.1, value.shape)).astype(np.float32)
    return model


@pytest.mark.parametrize("positional", ["sinusoidal", "rope", "relative"])
def test_numpy_logits_equal_torch_logits(positional):
    model = _model(positional)
    ids = np.random.default_rng(2).integers(0, 50, (2, 40))
    with torch.no_grad():
        theirs = TorchModel(model).forward(torch.as_tensor(ids)).numpy()
    np.testing.assert_allclose(model.forward(ids), theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("positional", ["sinusoidal", "rope", "relative"])
def test_numpy_gradients_equal_torch_autograd(positional):
    model = _model(positional).astype(np.float64)
    ids = np.random.default_rng(3).integers(0, 50, (2, 24))
    targets = np.random.default_rng(4).integers(0, 50, (2, 24))
    loss, grads = model.loss_and_grads(ids, targets)
    ref = TorchModel(model, requires_grad=True, dtype=torch.float64)
    logits = ref.forward(torch.as_tensor(ids))
    ref_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), torch.as_tensor(targets).reshape(-1))
    ref_loss.backward()
    assert loss == pytest.approx(ref_loss.item(), rel=1e-10)
    for name, g in grads.items():
        np.testing.assert_allclose(g, ref.p[name].grad.numpy(), rtol=1e-6, atol=1e-9, err_msg=name)
