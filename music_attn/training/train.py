"""Training in numpy: AdamW, warmup + cosine schedule, clipping, validation, exact resume.

Everything random (weight init, window sampling, transposition) draws from one
seeded ``np.random.Generator`` whose state is saved in every checkpoint, so the
same seed gives bit-identical weights and ``N steps + resume + N steps`` equals
``2N steps``.  Checkpoints are written atomically: after the first step of a
run, every ``checkpoint_every`` steps, at least every ``save_seconds`` of
training, at the end, and when Ctrl-C or SIGTERM asks the run to stop (the
current step is finished, saved, and the run stops).  A kill loses at most
``save_seconds`` of work.  A loss, gradient or weight that is not a finite
number stops the run with :class:`~music_attn.errors.TrainingDiverged` before
anything non-finite is saved: the last checkpoint written stays the last good one.

Shape legend: B batch, T window length.
"""

import dataclasses
import datetime
import math
import signal
import threading
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
from tqdm.auto import tqdm

from music_attn.errors import TrainingDiverged, shorten
from music_attn.runtime.checkpoint import load_checkpoint, save_checkpoint
from music_attn.training.data import TRANSPOSE_RANGE, augment_transpose, sample_windows
from music_attn.core.model import parallel_map
from music_attn.runtime.windows import alignment, corpus_nll

__all__ = ["TrainConfig", "TrainState", "AdamW", "lr_at", "clip_grads", "train",
           "train_state_from_checkpoint", "check_train_state", "resume_training", "fresh_training",
           "clock_deadline"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (saved in the checkpoint's training state).

    Attributes
    ----------
    steps : total optimizer steps (the cosine schedule ends there).
    batch_size, seq_len : B and T of a training batch.
    lr, min_lr : peak and final learning rate; warmup : linear warmup steps.
    betas, eps, weight_decay : AdamW (decay on matrices only, not biases/norms).
    grad_clip : clip the global gradient norm to this (0 = off).
    eval_every : validation loss every this many steps (0 = only at the end).
    eval_tokens : validation sequences are scored (by :func:`windows.corpus_nll`, windows
        of ``seq_len``) until this many tokens are counted.
    checkpoint_every : save every this many steps (0 = only at the end).
    transpose : (low, high) semitone range of transposition augmentation, or None.
    seed : seed of the run's np.random.Generator.
    workers : threads sharing each batch (see ``Model.loss_and_grads``); part of
        the config because the summation order of the gradients depends on it.
    skip_targets : None, or (k, r): targets at sequence positions p with p % k == r
        are not counted (the harmonizer's given soprano: (4, 1)).  Windows must
        start at multiples of k (the model's period is a multiple of k).
    """
    steps: int = 2000
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 100
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_tokens: int = 32768
    checkpoint_every: int = 500
    transpose: Optional[tuple] = TRANSPOSE_RANGE
    seed: int = 0
    workers: int = 2
    skip_targets: Optional[tuple] = None

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.min_lr < 0:
            raise ValueError(f"learning rates must be positive, got lr={self.lr}, min_lr={self.min_lr}")

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        d = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}
        for key in ("betas", "transpose", "skip_targets"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


# --------------------------------------------------------------------------- optimizer

def lr_at(step, config):
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    span = max(config.steps - config.warmup, 1)
    progress = min((step - config.warmup) / span, 1.0)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1.0 + math.cos(math.pi * progress))


def clip_grads(grads, max_norm):
    """Scale every gradient so that their global L2 norm is at most ``max_norm``; returns the norm."""
    norm = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
    if max_norm and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads.values():
            g *= scale
    return norm


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter), updating params in place.

    Weight decay applies to parameters with two or more dimensions (matrices,
    embeddings, relative tables), not to biases or norm gains.
    """

    def __init__(self, params, *, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01):
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, params, grads, lr):
        """One update of every parameter with learning rate ``lr`` (parameters in parallel)."""
        self.t += 1
        list(parallel_map(lambda name: self._update(params[name], grads[name], name, lr), params))

    def _update(self, p, g, name, lr):
        b1, b2 = self.betas
        m, v = self.m[name], self.v[name]
        tmp = g * (1.0 - b1)
        m *= b1
        m += tmp                                  # m = b1 m + (1 - b1) g
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - b2
        v *= b2
        v += tmp                                  # v = b2 v + (1 - b2) g^2
        np.sqrt(v, out=tmp)
        tmp *= 1.0 / math.sqrt(1.0 - b2 ** self.t)
        tmp += self.eps                           # sqrt(v_hat) + eps
        np.divide(m, tmp, out=tmp)
        tmp *= lr / (1.0 - b1 ** self.t)          # lr m_hat / (sqrt(v_hat) + eps)
        if self.weight_decay and p.ndim >= 2:
            p *= 1.0 - lr * self.weight_decay     # decoupled weight decay
        p -= tmp

    def state_arrays(self):
        return {**{f"m/{k}": v for k, v in self.m.items()}, **{f"v/{k}": v for k, v in self.v.items()}}

    def load_state_arrays(self, arrays, t):
        for k in self.m:
            self.m[k][...] = arrays[f"m/{k}"]
            self.v[k][...] = arrays[f"v/{k}"]
        self.t = int(t)


# --------------------------------------------------------------------------- state

class TrainState:
    """Everything that changes while training: step, optimizer, RNG, history."""

    def __init__(self, model, config, rng):
        self.config = config
        self.rng = rng
        self.step = 0
        self.optimizer = AdamW(model.params, betas=config.betas, eps=config.eps,
                               weight_decay=config.weight_decay)
        self.history = []           # dicts: step, loss, lr, (val_loss)

    def to_checkpoint(self):
        """The ``train_state`` dict that :func:`save_checkpoint` stores."""
        meta = {"step": self.step, "optimizer_t": self.optimizer.t,
                "rng": _jsonable_rng_state(self.rng), "config": self.config.to_dict(),
                "history": self.history}
        return {"meta": meta, "arrays": self.optimizer.state_arrays()}


def _jsonable_rng_state(rng):
    state = rng.bit_generator.state
    return {"bit_generator": state["bit_generator"], "state": state}


def train_state_from_checkpoint(model, train_state, config=None):
    """Rebuild a TrainState from a loaded checkpoint's ``train_state`` (exact resume).

    ``config`` overrides the saved TrainConfig (e.g. more steps).  The state is
    checked first (:func:`check_train_state`): ValueError says what is wrong.
    """
    check_train_state(model, train_state)
    meta = train_state["meta"]
    config = TrainConfig.from_dict(meta["config"]) if config is None else config
    bitgen = getattr(np.random, meta["rng"]["bit_generator"])()
    bitgen.state = meta["rng"]["state"]
    state = TrainState(model, config, np.random.Generator(bitgen))
    state.optimizer.load_state_arrays(train_state["arrays"], meta["optimizer_t"])
    state.step = int(meta["step"])
    state.history = list(meta["history"])
    return state


def check_train_state(model, train_state):
    """ValueError unless ``train_state`` is one a run of ``model`` could have saved.

    The step and the optimizer's step count are integers with 0 <= step and
    0 <= optimizer_t <= step, the history a
    list of records, and the optimizer's moments finite arrays of the parameters'
    shapes (second moments >= 0).
    """
    meta, arrays = train_state.get("meta"), train_state.get("arrays")
    if not isinstance(meta, dict) or not isinstance(arrays, dict):
        raise ValueError("no training state record")
    step, t = meta.get("step"), meta.get("optimizer_t")
    for name, value in (("step", step), ("optimizer step", t)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
            raise ValueError(f"the {name} is {shorten(repr(value), 40)}, not a count of steps")
    if t > step:
        raise ValueError(f"the optimizer step {t} is past the training step {step}")
    history = meta.get("history")
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise ValueError("the history is not a list of records")
    for kind in "mv":
        for name, p in model.params.items():
            a = arrays.get(f"{kind}/{name}")
            if a is None or np.shape(a) != p.shape:
                raise ValueError(f"the optimizer state {kind}/{name} does not match the parameter {p.shape}")
            if not np.isfinite(a).all() or (kind == "v" and (a < 0).any()):
                raise ValueError(f"the optimizer state {kind}/{name} holds impossible values")


# --------------------------------------------------------------------------- data

def train_batch(sequences, config, rng, tokenizer, pad_id, align=1):
    """Inputs and targets (B, T) of one random batch; padding targets are -1 (not counted).

    Windows start at multiples of ``align`` (:func:`windows.alignment` of the model).
    """
    windows = sample_windows(sequences, config.batch_size, config.seq_len, rng, pad_id=pad_id,
                             align=align)
    if config.transpose is not None and tokenizer is not None:
        low, high = config.transpose
        windows = np.stack([augment_transpose(w, tokenizer, rng, low, high) for w in windows])
    ids, targets = windows[:, :-1], windows[:, 1:].astype(np.int64)   # (B, T+1) -> (B, T)
    targets[targets == pad_id] = -1
    skip_target_phases(targets, config, align)
    return ids, targets


def skip_target_phases(targets, config, align):
    """Set to -1 (in place) the targets (B, T) whose sequence position p has p % k == r, for
    ``config.skip_targets = (k, r)`` (nothing when None); windows start at multiples of ``align``."""
    if config.skip_targets is None:
        return
    k, r = config.skip_targets
    if align % k:
        raise ValueError(f"skip_targets needs windows aligned to multiples of {k}, got {align}")
    position = np.arange(1, targets.shape[1] + 1)              # target j is token start + j + 1
    targets[:, position % k == r] = -1


# --------------------------------------------------------------------------- loop

class StopOnInterrupt:
    """Turn the first Ctrl-C or SIGTERM into a request to stop at the end of the current step.

    SIGTERM is what a timeout, ``docker stop``, systemd or a cluster scheduler
    sends: it is treated like Ctrl-C.  A second signal interrupts at once.
    ``signal`` is the number of the signal that asked (None if none did).  Only
    active in the main thread.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.signal = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.signal = True, signum

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        return False


def _train_step(model, sequences, state, tokenizer, pad_id):
    """One optimizer step; returns the history record of the step."""
    config = state.config
    ids, targets = train_batch(sequences, config, state.rng, tokenizer, pad_id, alignment(model))
    loss, grads = model.loss_and_grads(ids, targets, workers=config.workers, rng=state.rng)
    norm = clip_grads(grads, config.grad_clip)
    if not (math.isfinite(loss) and math.isfinite(norm)):      # before the update: the weights stay as they were
        raise TrainingDiverged(f"the loss is {float(loss):.4g} and the gradient norm {norm:.4g} at step {state.step + 1}")
    lr = lr_at(state.step, config)
    state.optimizer.step(model.params, grads, lr)
    return {"step": state.step + 1, "loss": float(loss), "lr": lr, "grad_norm": norm}


SAVE_SECONDS = 60.0        # a kill loses at most this much training


def is_due(step, every, last):
    return step == last or (every > 0 and step % every == 0)


def _record_validation(model, nll, tokens, step):
    """Keep the latest validation NLL in ``model.metrics``, which checkpoints save (inspect reads it)."""
    model.metrics = {**(getattr(model, "metrics", None) or {}), "validation_nats_per_token": nll,
                     "validation_tokens": tokens, "validation_step": step}


def train(model, sequences, config, *, state=None, val_sequences=None, tokenizer=None,
          checkpoint=None, stop_after=None, time_limit=None, progress=True, save_seconds=SAVE_SECONDS,
          force=False):
    """Train ``model`` in place on token sequences.

    Parameters
    ----------
    model : Model (its ``tokenizer`` is saved in checkpoints).
    sequences : list of int arrays, the training token sequences.
    config : TrainConfig.
    state : TrainState to continue (resume); None starts afresh from ``config.seed``.
    val_sequences : validation sequences, evaluated every ``config.eval_every`` steps.
    tokenizer : needed for transposition augmentation (defaults to ``model.tokenizer``).
    checkpoint : path to save to after the first step, every ``config.checkpoint_every``
        steps, at least every ``save_seconds`` seconds, at the end and on Ctrl-C or
        SIGTERM; None saves nothing.
    stop_after : stop at this step (before ``config.steps``) without changing the schedule.
    time_limit : stop (and save) after this many seconds, whatever the step.
    progress : show a tqdm bar (loss, tokens/s, ETA).
    save_seconds : the longest stretch of training a kill may lose (0: no timed saves).
    force : replace a read-only checkpoint file (see :func:`music_attn._io.check_output`).

    Returns
    -------
    TrainState  (``state.interrupted`` is True when Ctrl-C or SIGTERM stopped the run;
    ``state.stop_signal`` is that signal's number)

    Raises
    ------
    TrainingDiverged : a loss, gradient or weight stopped being finite; nothing
        non-finite was saved (the message says which step the checkpoint holds).
    """
    if config.seq_len > model.config.max_len:
        raise ValueError(f"seq_len={config.seq_len} exceeds the model's max_len={model.config.max_len}")
    tokenizer = model.tokenizer if tokenizer is None else tokenizer
    pad_id = tokenizer.pad_id if tokenizer is not None else 0
    state = TrainState(model, config, np.random.default_rng(config.seed)) if state is None else state
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    state.interrupted, state.stop_signal = False, None
    saver = _Saver(checkpoint, model, state, save_seconds, force)
    deadline = math.inf if time_limit is None else time.monotonic() + time_limit
    with StopOnInterrupt() as stop, tqdm(total=end, initial=state.step, disable=not progress,
                                          unit="step", dynamic_ncols=True) as bar:
        try:
            while state.step < end and not stop.requested and time.monotonic() < deadline:
                record = _step_and_record(model, sequences, state, tokenizer, pad_id, val_sequences, end, bar,
                                          progress)
                if saver.due(is_due(state.step, config.checkpoint_every, end)):
                    saver.save()
            if saver.saved != state.step:
                saver.save()
        except TrainingDiverged as exc:
            raise TrainingDiverged(f"training diverged: {exc}; {saver.kept()} (try a lower --lr)") from None
        state.interrupted, state.stop_signal = stop.requested, stop.signal
    return state


def resume_training(path, *, steps=None):
    """(Model, TrainState) from the checkpoint at ``path`` that holds a training state; ``steps``
    lengthens the run.  CheckpointError when the state is missing or unusable."""
    from music_attn.errors import CheckpointError
    ckpt = load_checkpoint(path)
    if ckpt.train_state is None:
        raise CheckpointError(f"{path}: holds no training state to resume from")
    try:
        config = TrainConfig.from_dict(ckpt.train_state["meta"]["config"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: unusable training state ({exc})") from None
    if steps is not None:
        config = dataclasses.replace(config, steps=steps)
    _check_rng(ckpt.train_state["meta"], path)
    try:
        return ckpt.model, train_state_from_checkpoint(ckpt.model, ckpt.train_state, config)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{path}: unusable training state ({type(exc).__name__}: {exc})") from None


def fresh_training(tokenizer, *, d_model, layers, heads, d_ff, max_len, positional, attention, window, alpha,
                   steps, batch_size, seq_len, lr, warmup, eval_every, checkpoint_every, no_transpose, seed):
    """(Model, TrainState) of a new run from the ``train`` command's options (None: the default;
    ``d_ff`` defaults to 4 x ``d_model``, ``max_len`` to the larger of ``seq_len`` and ModelConfig's).

    The model options are checked together; a MusicAttnError names the flags at fault."""
    from music_attn.core.model import ModelConfig, init_model
    from music_attn.errors import MusicAttnError
    if d_model % heads:
        raise MusicAttnError(f"--d-model {d_model} is not divisible by --heads {heads}")
    if (positional == "rope" or attention == "soft_align") and (d_model // heads) % 2:
        raise MusicAttnError(f"--positional rope and --attention soft_align need an even head width "
                             f"(--d-model / --heads = {d_model // heads})")
    max_len = max_len or max(seq_len, _default(ModelConfig, "max_len"))
    if max_len < seq_len:
        raise MusicAttnError(f"--max-len {max_len} is shorter than --seq-len {seq_len}")
    config = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=d_model, n_layers=layers, n_heads=heads,
                         d_ff=d_ff or 4 * d_model, max_len=max_len, positional=positional,
                         attention=attention, window=window, alpha=alpha)
    tconf = TrainConfig(steps=_default(TrainConfig, "steps") if steps is None else steps,
                        batch_size=batch_size, seq_len=seq_len, lr=lr, min_lr=lr / 10, warmup=warmup,
                        eval_every=eval_every, checkpoint_every=checkpoint_every,
                        transpose=None if no_transpose else _default(TrainConfig, "transpose"), seed=seed)
    rng = np.random.default_rng(seed)
    model = init_model(config, rng, tokenizer=tokenizer)
    return model, TrainState(model, tconf, rng)


def _default(cls, name):
    return {f.name: f.default for f in dataclasses.fields(cls)}[name]


def _check_rng(meta, path):
    """The saved generator must name one of numpy's bit generators (nothing else is called)."""
    import numpy as np
    from music_attn.errors import CheckpointError
    name = meta.get("rng", {}).get("bit_generator") if isinstance(meta.get("rng"), dict) else None
    kind = getattr(np.random, name, None) if isinstance(name, str) else None
    if not (isinstance(kind, type) and issubclass(kind, np.random.BitGenerator)):
        raise CheckpointError(f"{path}: unusable training state (random generator {str(name)[:40]!r})")


def _step_and_record(model, sequences, state, tokenizer, pad_id, val_sequences, end, bar, progress):
    """One step, its validation when due, its history record and the progress bar."""
    config = state.config
    t0 = time.perf_counter()
    record = _train_step(model, sequences, state, tokenizer, pad_id)
    tokens_per_s = config.batch_size * config.seq_len / (time.perf_counter() - t0)
    state.step += 1
    if val_sequences and is_due(state.step, config.eval_every, end):
        record["val_loss"], n_val = corpus_nll(model, val_sequences, window=config.seq_len,
                                               batch_size=config.batch_size, max_tokens=config.eval_tokens)
        _record_validation(model, record["val_loss"], n_val, state.step)
        if progress:
            bar.write(f"step {state.step}: train loss {record['loss']:.4f}, "
                      f"validation loss {record['val_loss']:.4f}")
    state.history.append(record)
    bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
    bar.update(1)
    return record


class _Saver:
    """When and what to save: the first step of a run, scheduled steps, every ``seconds``; never
    non-finite weights."""

    def __init__(self, path, model, state, seconds, force):
        self.path, self.model, self.state, self.seconds, self.force = path, model, state, seconds, force
        self.saved, self.last = None, time.monotonic()

    def due(self, scheduled):
        if self.path is None:
            return False
        late = bool(self.seconds) and time.monotonic() - self.last >= self.seconds
        return scheduled or self.saved is None or late

    def save(self):
        if self.path is None:
            return
        bad = next((k for k, v in self.model.params.items() if not np.isfinite(v).all()), None)
        if bad is not None:
            raise TrainingDiverged(f"the weights {bad} are not finite after step {self.state.step}")
        save_checkpoint(self.path, self.model, train_state=self.state.to_checkpoint(), force=self.force)
        self.saved, self.last = self.state.step, time.monotonic()

    def kept(self):
        if self.path is None:
            return "nothing was saved"
        if self.saved is None:
            return f"{self.path} was not written by this run"
        return f"{self.path} keeps step {self.saved}, the last good checkpoint"


def clock_deadline(until):
    """Seconds since the epoch at the next HH:MM (UTC) of ``until`` (a training script's
    ``--until``), or inf when it is empty."""
    if not until:
        return np.inf
    now = datetime.datetime.now(datetime.timezone.utc)
    hour, minute = (int(x) for x in until.split(":"))
    at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return (at if at > now else at + datetime.timedelta(days=1)).timestamp()

