"""Checkpoints: one ``.npz`` holding a model, its tokenizer and (optionally) training state.

Layout of the file (every entry an array; nothing pickled, loaded with
``allow_pickle=False``):

* ``format`` -- JSON ``{"format": "music_attn.checkpoint", "version": 1}``
* ``model_config`` -- JSON of :class:`ModelConfig`
* ``tokenizer`` / ``vocab`` -- JSON of the tokenizer config and its vocabulary
  (absent for a model without a tokenizer)
* ``param/<name>`` -- every parameter
* ``train/<name>`` and ``train_state`` -- optimizer arrays and JSON (step, RNG
  state, training config, history), for an exact resume
* ``metrics`` (optional) -- JSON of what is known about the model, e.g.
  ``{"validation_nats_per_token": 0.607, "validation_tokens": 147482}``; loaded
  as ``model.metrics`` (``{}`` when absent) so that ``inspect`` can say how well a
  piece fits the model

JSON is stored as a 0-d unicode array.  Files are written atomically: a kill
in the middle of a save leaves the previous checkpoint intact.
"""

import importlib.resources
import json
import zipfile
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from music_attn._io import atomic_write
from music_attn.errors import CheckpointError
from music_attn.core.model import Model, ModelConfig

__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "shipped_model_path", "Checkpoint",
           "FORMAT", "VERSION"]

FORMAT = "music_attn.checkpoint"
VERSION = 1


class Checkpoint(NamedTuple):
    """What a checkpoint file holds.

    model : Model (with ``model.tokenizer`` when one was saved).
    train_state : dict with ``"meta"`` (JSON-able dict) and ``"arrays"``
        (name -> ndarray), or None for a weights-only file.
    """
    model: Model
    train_state: Optional[dict]


def _json_array(obj):
    return np.array(json.dumps(obj, sort_keys=True))


def _read_json(data, key, path):
    try:
        return json.loads(str(data[key][()]))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: entry {key!r} is not valid JSON ({exc})") from None


def save_checkpoint(path, model, *, train_state=None, metrics=None):
    """Write ``model`` (and optional training state) to ``path`` atomically.

    Parameters
    ----------
    path : str or Path, the ``.npz`` file to write.
    model : Model
    train_state : dict with ``"meta"`` (JSON-able) and ``"arrays"`` (name -> ndarray), or None.
    metrics : JSON-able dict, or None for ``model.metrics`` (when the model has any).
    """
    entries = {"format": _json_array({"format": FORMAT, "version": VERSION}),
               "model_config": _json_array(model.config.to_dict())}
    if model.tokenizer is not None:
        entries["tokenizer"] = _json_array(model.tokenizer.to_dict())
        entries["vocab"] = _json_array(list(model.tokenizer.vocab))
    entries.update({f"param/{k}": np.ascontiguousarray(v) for k, v in model.params.items()})
    metrics = getattr(model, "metrics", None) if metrics is None else metrics
    if metrics:
        entries["metrics"] = _json_array(metrics)
    if train_state is not None:
        entries["train_state"] = _json_array(train_state["meta"])
        entries.update({f"train/{k}": np.ascontiguousarray(v)
                        for k, v in train_state["arrays"].items()})
    with atomic_write(path, mode="wb") as f:
        np.savez(f, **entries)


def _open(path):
    """Every entry of the npz read into memory (so truncation is found here)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt .npz: "
                              f"{exc})") from None


def _check_format(data, path):
    if "format" not in data or "model_config" not in data:
        raise CheckpointError(f"{path}: not a music_attn checkpoint (no format/model_config entry)")
    fmt = _read_json(data, "format", path)
    if not isinstance(fmt, dict) or fmt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a music_attn checkpoint (format {fmt!r})")
    if fmt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {fmt.get('version')} is not supported "
                              f"(this library reads version {VERSION})")


def _tokenizer(data, config, path):
    """The saved tokenizer, checked against the saved vocabulary and the model config."""
    if "tokenizer" not in data:
        return None
    from music_attn.music.tokenizer import Tokenizer    # the music side, only needed here
    try:
        tokenizer = Tokenizer.from_dict(_read_json(data, "tokenizer", path))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: bad tokenizer config ({exc})") from None
    if "vocab" in data and list(tokenizer.vocab) != _read_json(data, "vocab", path):
        raise CheckpointError(f"{path}: the tokenizer's vocabulary does not match the saved one")
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model "
                              f"config says vocab_size={config.vocab_size}")
    return tokenizer


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    FileNotFoundError : no such file.
    CheckpointError : not a checkpoint, truncated, or parameters that do not
        match the saved config (the message names the file).
    """
    path = Path(path)
    data = _open(path)
    _check_format(data, path)
    try:
        config = ModelConfig.from_dict(_read_json(data, "model_config", path))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: bad model config ({exc})") from None
    params = {k[len("param/"):]: v for k, v in data.items() if k.startswith("param/")}
    try:
        model = Model(config, params, tokenizer=_tokenizer(data, config, path))
    except ValueError as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path}: parameters do not match the saved config ({exc})") from None
    model.metrics = _metrics(data, path)
    state = None
    if "train_state" in data:
        arrays = {k[len("train/"):]: v for k, v in data.items() if k.startswith("train/")}
        state = {"meta": _read_json(data, "train_state", path), "arrays": arrays}
    return Checkpoint(model, state)


def _metrics(data, path):
    if "metrics" not in data:
        return {}
    metrics = _read_json(data, "metrics", path)
    if not isinstance(metrics, dict):
        raise CheckpointError(f"{path}: entry 'metrics' is not a JSON object")
    return metrics


def shipped_model_path():
    """Where the pretrained model lives inside the installed package."""
    return Path(str(importlib.resources.files("music_attn") / "assets" / "model.npz"))


def load_model(path=None):
    """Load a model with its tokenizer; ``None`` loads the shipped pretrained model."""
    if path is None:
        path = shipped_model_path()
        if not path.is_file():
            raise CheckpointError(f"{path}: the pretrained model is missing from the package "
                                  "(build it with scripts/train_default.py)")
    return load_checkpoint(path).model
