"""TorchTransformer's fused path and KV cache (the bench's torch column) against the numpy model."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from music_attn.core.model import ModelConfig, init_model  # noqa: E402
from music_attn.interop.torch_bridge import to_torch  # noqa: E402


def _model(positional, period=0, seed=0):
    config = ModelConfig(vocab_size=50, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_len=64,
                         positional=positional, period=period)
    model = init_model(config, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)   # move the weights off their tiny initial values
    for name, value in model.params.items():
        model.params[name] = (value + rng.normal(0, 0.1, value.shape)).astype(np.float32)
    return model


@pytest.mark.parametrize("positional", ["sinusoidal", "rope", "relative"])
@pytest.mark.parametrize("period", [0, 8])
def test_fused_forward_equals_numpy_and_the_explicit_softmax_path(positional, period):
    model = _model(positional, period)
    ids = np.random.default_rng(2).integers(0, 50, (2, 40))
    module = to_torch(model)
    with torch.no_grad():
        fused = module(torch.as_tensor(ids)).numpy()
        explicit, _ = module(torch.as_tensor(ids), return_attention=True)
    np.testing.assert_allclose(fused, model.forward(ids), atol=1e-4, rtol=0)
    np.testing.assert_allclose(fused, explicit.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("positional", ["sinusoidal", "rope", "relative"])
def test_cache_one_token_at_a_time_equals_the_numpy_forward(positional):
    model = _model(positional, period=4)
    ids = np.random.default_rng(3).integers(0, 50, (2, 30))
    module = to_torch(model)
    cache = module.new_cache()
    with torch.no_grad():
        steps = [module(torch.as_tensor(ids[:, :5]), cache=cache)]
        steps += [module(torch.as_tensor(ids[:, t:t + 1]), cache=cache) for t in range(5, 30)]
    np.testing.assert_allclose(torch.cat(steps, dim=1).numpy(), model.forward(ids), atol=1e-4, rtol=0)
    assert cache["len"] == 30


def test_the_cache_refuses_chunks_after_the_prompt_and_other_attention():
    module = to_torch(_model("relative"))
    cache = module.new_cache()
    with torch.no_grad():
        module(torch.zeros((1, 4), dtype=torch.int64), cache=cache)
        with pytest.raises(ValueError, match="one token per call"):
            module(torch.zeros((1, 2), dtype=torch.int64), cache=cache)
