"""The PyTorch bridge: our model to and from ``nn.Module``, and training it in torch.

``to_torch(model)`` gives a :class:`~music_attn.interop.torch_model.TorchTransformer`
with a copy of the weights; ``from_torch(module)`` gives our :class:`Model` back
(so :func:`music_attn.save_checkpoint` writes the usual ``.npz``).  ``train_torch``
is :func:`music_attn.training.train.train` in torch: the same batches (drawn
from the same seeded generator), AdamW, schedule, clipping, validation,
checkpoints (optimizer moments included, so either backend resumes the other's
run) and progress bar.  Under ``torchrun --nproc_per_node N`` it runs
data-parallel (``DistributedDataParallel``, gloo on CPU, nccl on CUDA): every
process draws the same global batch and takes its share of the rows; the loss
is the sum of NLLs over the process's rows divided by the global token count
times N, so DDP's gradient average is exactly the gradient of the global mean.

Shape legend: B batch, T window length.
"""

import math
import os
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from music_attn.core.model import Model
from music_attn.interop.torch_model import TorchTransformer, our_name
from music_attn.runtime.checkpoint import save_checkpoint
from music_attn.training.train import (
    TrainState, train_batch, is_due, StopOnInterrupt, lr_at,
)
from music_attn.runtime.windows import alignment, span_batches

__all__ = ["to_torch", "from_torch", "train_torch", "TorchTransformer", "init_distributed"]

_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def to_torch(model, *, device=None):
    """A :class:`TorchTransformer` with a copy of ``model``'s weights (same dtype).

    Parameters
    ----------
    model : music_attn.Model
    device : torch device (default CPU).
    """
    dtype = _DTYPES.get(np.dtype(model.dtype))
    if dtype is None:
        raise ValueError(f"to_torch supports float32 and float64 models, not {model.dtype}")
    module = TorchTransformer(model.config, dtype=dtype)
    with torch.no_grad():
        for name, value in model.params.items():
            module.p(name).copy_(torch.from_numpy(np.ascontiguousarray(value)))
    module.tokenizer = model.tokenizer
    return module.to(device) if device is not None else module


def from_torch(module, *, tokenizer=None):
    """Our :class:`Model` with a copy of a :class:`TorchTransformer`'s weights.

    A ``DistributedDataParallel`` wrapper is unwrapped.  ``tokenizer`` defaults
    to the one :func:`to_torch` attached.
    """
    module = getattr(module, "module", module)
    if not isinstance(module, TorchTransformer):
        raise TypeError(f"from_torch needs a TorchTransformer, got {type(module).__name__}")
    params = {our_name(name): p.detach().cpu().numpy().copy() for name, p in module.params.items()}
    if tokenizer is None:
        tokenizer = getattr(module, "tokenizer", None)
    return Model(module.config, params, tokenizer=tokenizer)


# --------------------------------------------------------------------------- distributed

def init_distributed():
    """Join the process group ``torchrun`` describes (no-op when not under torchrun).

    Returns (rank, world_size, device): gloo and CPU without CUDA, nccl and one
    GPU per process (``LOCAL_RANK``) with it.
    """
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device
    return 0, 1, device


def _world():
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


# --------------------------------------------------------------------------- optimizer

def _optimizer(module, config):
    """torch AdamW with our rule: decay on matrices (ndim >= 2) only."""
    params = list(module.params.values())
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps)


def _load_moments(optimizer, module, state):
    """Copy a TrainState's AdamW moments (numpy) into the torch optimizer (resume)."""
    if state.optimizer.t == 0:
        return
    for name, p in module.params.items():
        ours = our_name(name)
        optimizer.state[p] = {
            "step": torch.tensor(float(state.optimizer.t)),
            "exp_avg": torch.tensor(state.optimizer.m[ours], dtype=p.dtype, device=p.device),
            "exp_avg_sq": torch.tensor(state.optimizer.v[ours], dtype=p.dtype, device=p.device)}


def _save_moments(optimizer, module, state):
    """Copy the torch optimizer's moments into the TrainState (for the checkpoint)."""
    for name, p in module.params.items():
        st = optimizer.state.get(p)
        if st:
            state.optimizer.m[our_name(name)][...] = st["exp_avg"].cpu().numpy()
            state.optimizer.v[our_name(name)][...] = st["exp_avg_sq"].cpu().numpy()
    state.optimizer.t = state.step


# --------------------------------------------------------------------------- loop

def _rows(batch, rank, world):
    """This process's share of the batch rows (contiguous, as even as possible)."""
    return np.array_split(np.arange(batch), world)[rank]


def _loss(net, ids, targets, count, world):
    """Sum of token NLLs / global count x world: DDP's mean of it is the global mean's gradient."""
    logits = net(ids)                                                           # (B, T, V)
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1,
                          reduction="sum")
    return nll * (world / count)


def _step(net, optimizer, sequences, state, tokenizer, pad_id, device):
    """One optimizer step on this process's rows of the global batch; the history record."""
    config = state.config
    rank, world = _world()
    ids, targets = train_batch(sequences, config, state.rng, tokenizer, pad_id,
                               alignment(getattr(net, "module", net)))       # (B, T) global
    count = max(int((targets >= 0).sum()), 1)
    rows = _rows(len(ids), rank, world)
    ids_t = torch.as_tensor(ids[rows], dtype=torch.int64, device=device)
    tgt_t = torch.as_tensor(targets[rows], dtype=torch.int64, device=device)
    optimizer.zero_grad(set_to_none=True)
    loss = _loss(net, ids_t, tgt_t, count, world)
    loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip or math.inf))
    lr = lr_at(state.step, config)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    total = loss.detach() / world
    if world > 1:
        dist.all_reduce(total)
    return {"step": state.step + 1, "loss": float(total), "lr": lr, "grad_norm": norm}


@torch.no_grad()
def _evaluate(module, batches, device):
    """Mean NLL (nats/token) over :func:`windows.span_batches` (ids, targets), -1 not counted."""
    total, count = 0.0, 0
    for ids, targets, _ in batches:
        w = torch.as_tensor(ids, dtype=torch.int64, device=device)
        t = torch.as_tensor(targets, dtype=torch.int64, device=device)
        logits = module(w)
        total += float(F.cross_entropy(logits.flatten(0, 1), t.flatten(), ignore_index=-1,
                                       reduction="sum"))
        count += int((t >= 0).sum())
    return total / max(count, 1)


def _save(path, module, state, optimizer, tokenizer):
    _save_moments(optimizer, module, state)
    save_checkpoint(path, from_torch(module, tokenizer=tokenizer), train_state=state.to_checkpoint())


def _wrap(module, device):
    """DistributedDataParallel when a process group is up, else the module itself."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)


def train_torch(model, sequences, config, *, state=None, val_sequences=None, tokenizer=None,
                checkpoint=None, stop_after=None, progress=True, device=None):
    """Train ``model`` in torch (data-parallel under torchrun) and return its TrainState.

    Parameters are those of :func:`music_attn.training.train.train`, plus
    ``device`` (default: this process's CUDA device, else CPU).  The trained
    weights are copied back into ``model.params``; only rank 0 writes the
    checkpoint and shows the progress bar.
    """
    if config.seq_len > model.config.max_len:
        raise ValueError(f"seq_len={config.seq_len} exceeds the model's max_len={model.config.max_len}")
    device = init_distributed()[2] if device is None else torch.device(device)
    rank, world = _world()
    if config.batch_size < world:
        raise ValueError(f"batch_size={config.batch_size} is smaller than the {world} processes")
    tokenizer = model.tokenizer if tokenizer is None else tokenizer
    pad_id = tokenizer.pad_id if tokenizer is not None else 0
    state = TrainState(model, config, np.random.default_rng(config.seed)) if state is None else state
    module = to_torch(model, device=device)
    net, optimizer = _wrap(module, device), _optimizer(module, config)
    _load_moments(optimizer, module, state)
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    val = (list(span_batches(val_sequences, config.seq_len, batch_size=config.batch_size,
                             max_tokens=config.eval_tokens, align=alignment(model))) if val_sequences else None)
    loop = _Loop(net, module, optimizer, state, tokenizer, pad_id, device, checkpoint, rank == 0)
    with StopOnInterrupt() as stop, tqdm(total=end, initial=state.step, unit="step", dynamic_ncols=True,
                                          disable=not (progress and rank == 0)) as bar:
        loop.run(sequences, val, end, stop, bar)
    model.params.update(from_torch(module).params)
    return state


class _Loop:
    """The step / validate / checkpoint cycle of :func:`train_torch`."""

    def __init__(self, net, module, optimizer, state, tokenizer, pad_id, device, checkpoint, main):
        self.net, self.module, self.optimizer, self.state = net, module, optimizer, state
        self.tokenizer, self.pad_id, self.device = tokenizer, pad_id, device
        self.checkpoint, self.main = checkpoint, main

    def run(self, sequences, val, end, stop, bar):
        state, config = self.state, self.state.config
        state.interrupted, saved = False, None
        while state.step < end and not _agreed(stop.requested, self.device):
            t0 = time.perf_counter()
            record = _step(self.net, self.optimizer, sequences, state, self.tokenizer,
                           self.pad_id, self.device)
            tokens_per_s = config.batch_size * config.seq_len / (time.perf_counter() - t0)
            state.step += 1
            if val is not None and len(val) and is_due(state.step, config.eval_every, end):
                record["val_loss"] = _evaluate(self.module, val, self.device)
                if self.main and not bar.disable:
                    bar.write(f"step {state.step}: train loss {record['loss']:.4f}, "
                              f"validation loss {record['val_loss']:.4f}")
            state.history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
            bar.update(1)
            if is_due(state.step, config.checkpoint_every, end):
                saved = self._save() or saved
        state.interrupted = stop.requested
        if saved != state.step:
            self._save()

    def _save(self):
        """Write the checkpoint (rank 0 only); returns the step saved, or None."""
        if self.checkpoint is None or not self.main:
            return None
        _save(self.checkpoint, self.module, self.state, self.optimizer, self.tokenizer)
        return self.state.step


def _agreed(flag, device):
    """True on every process when any process's flag is set (so all stop at the same step)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)
