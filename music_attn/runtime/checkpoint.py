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

Every parameter must be finite and at most ``MAX_WEIGHT`` in magnitude: a
NaN, an infinity or an absurd scale (which would overflow the model's
products into inf) is refused at load, naming the file and the array.

JSON is stored as a 0-d unicode array.  Files are written atomically: a kill
in the middle of a save leaves the previous checkpoint intact.
"""

import dataclasses
import importlib.resources
import json
import math
import zipfile
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from music_attn._io import atomic_write, check_input
from music_attn.errors import CheckpointError, shorten
from music_attn.core.model import Model, ModelConfig, param_shapes

__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "shipped_model_path", "Checkpoint",
           "FORMAT", "VERSION", "MAX_BYTES"]

FORMAT = "music_attn.checkpoint"
VERSION = 1
MAX_BYTES = 4 * 2**30          # parameters + optimizer state a checkpoint may hold, decompressed
MAX_JSON_CHARS = 16 * 2**20    # each JSON entry (config, tokenizer, vocabulary, training state)
MAX_JSON_DEPTH = 32
MAX_ENTRIES = 100_000
MAX_WEIGHT = 1e6               # trained weights are of order 1; 1e6 is far past any, far below overflow
_FLOAT_KINDS, _NUMBER_KINDS = "f", "fiub"


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


def save_checkpoint(path, model, *, train_state=None, metrics=None, force=False):
    """Write ``model`` (and optional training state) to ``path`` atomically.

    Parameters
    ----------
    path : str or Path, the ``.npz`` file to write.
    model : Model
    train_state : dict with ``"meta"`` (JSON-able) and ``"arrays"`` (name -> ndarray), or None.
    metrics : JSON-able dict, or None for ``model.metrics`` (when the model has any).
    force : replace ``path`` even when it is a read-only file.
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
    with atomic_write(path, mode="wb", force=force) as f:
        np.savez(f, **entries)


# ------------------------------------------------------------------ reading, bounded
class _Entry(NamedTuple):
    """One ``.npy`` member of the archive, described by its header (data not read yet)."""
    info: zipfile.ZipInfo
    dtype: np.dtype
    shape: tuple
    fortran: bool

    @property
    def nbytes(self):
        return math.prod(self.shape) * self.dtype.itemsize


def _entries(archive, path):
    """name -> _Entry of every member: headers only, each checked to be a plain array."""
    entries = {}
    if len(archive.infolist()) > MAX_ENTRIES:
        raise CheckpointError(f"{path}: {len(archive.infolist())} entries, more than a checkpoint holds")
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            raise CheckpointError(f"{path}: member {info.filename!r} is not a .npy array")
        with archive.open(info) as f:
            entry = _Entry(info, *_header(f, info.filename, path))
        if entry.dtype.hasobject or entry.dtype.kind not in _NUMBER_KINDS + "U":
            raise CheckpointError(f"{path}: entry {info.filename[:-4]!r} has dtype {entry.dtype}, "
                                  "not numbers or text (object arrays are never loaded)")
        entries[info.filename[:-4]] = entry
    return entries


def _header(f, name, path):
    """(dtype, shape, fortran_order) from an .npy header, without reading the data."""
    try:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"unsupported .npy version {version}")
        shape, fortran, dtype = read(f)
    except (ValueError, TypeError, SyntaxError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: entry {name!r} has no valid .npy header ({exc})") from None
    return np.dtype(dtype), tuple(int(n) for n in shape), bool(fortran)


def _read(archive, entry, path):
    """The array of ``entry``: exactly the bytes its (already checked) header declares."""
    name = entry.info.filename[:-4]
    try:
        with archive.open(entry.info) as f:
            _header(f, name, path)
            data = f.read(entry.nbytes)
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: entry {name!r} is corrupt ({exc})") from None
    if len(data) != entry.nbytes:
        raise CheckpointError(f"{path}: entry {name!r} is truncated ({len(data)} of {entry.nbytes} bytes)")
    array = np.frombuffer(bytearray(data), dtype=entry.dtype)
    return array.reshape(entry.shape, order="F" if entry.fortran else "C")


def _open(path):
    """The archive of ``path`` and its entries' headers; CheckpointError for anything else."""
    check_input(path, what="checkpoint", error=CheckpointError)
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise CheckpointError(f"{path}: a single .npy array, not a checkpoint (.npz)")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint (not an .npz archive: {exc})") from None
    try:
        return archive, _entries(archive, path)
    except BaseException:
        archive.close()
        raise


def _read_json(archive, entries, key, path):
    """The JSON of a text entry, bounded in size, depth and values."""
    entry = entries[key]
    if entry.dtype.kind != "U" or entry.shape != () or entry.dtype.itemsize > 4 * MAX_JSON_CHARS:
        raise CheckpointError(f"{path}: entry {key!r} is not JSON text of a sane size "
                              f"(dtype {entry.dtype}, shape {entry.shape})")
    text = str(_read(archive, entry, path)[()])
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise CheckpointError(f"{path}: entry {key!r} is JSON nested too deeply") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: entry {key!r} is not valid JSON ({exc})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{path}: entry {key!r} is JSON nested too deeply")
    return value


def _no_constant(name):
    raise ValueError(f"{name} is not a number a checkpoint may hold")


def _depth(value, level=1):
    """Nesting depth of parsed JSON (iterative, so any depth is safe to measure)."""
    deepest, stack = 0, [(value, level)]
    while stack:
        item, d = stack.pop()
        deepest = max(deepest, d)
        if d <= MAX_JSON_DEPTH and isinstance(item, (list, dict)):
            stack.extend((x, d + 1) for x in (item.values() if isinstance(item, dict) else item))
    return deepest


def _check_format(archive, entries, path):
    if "format" not in entries or "model_config" not in entries:
        raise CheckpointError(f"{path}: not a music_attn checkpoint (no format/model_config entry)")
    fmt = _read_json(archive, entries, "format", path)
    if not isinstance(fmt, dict) or fmt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a music_attn checkpoint (format {_short(fmt)})")
    if fmt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {_short(fmt.get('version'))} is not supported "
                              f"(this library reads version {VERSION})")


def _short(value):
    return shorten(repr(value), 80)


def _model_config(archive, entries, path):
    """The ModelConfig, each field of the type its default has."""
    d = _read_json(archive, entries, "model_config", path)
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: the model config is not a JSON object")
    for field in dataclasses.fields(ModelConfig):
        kind = int if field.name == "vocab_size" else type(field.default)
        value = d.get(field.name, field.default)
        ok = (isinstance(value, kind) or (kind is float and isinstance(value, int))) and not isinstance(value, bool)
        if not ok or (kind is float and not math.isfinite(value)):
            raise CheckpointError(f"{path}: bad model config: {field.name} = {_short(value)}")
    try:
        return ModelConfig.from_dict(d)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: bad model config ({exc})") from None


def _implied(config):
    """(number of parameters arrays, number of values) a config implies, without listing its layers."""
    def count(n_layers):
        shapes = param_shapes(dataclasses.replace(config, n_layers=n_layers))
        return len(shapes), sum(math.prod(s) for s in shapes.values())
    (arrays1, values1), (arrays2, values2) = count(1), count(2)
    extra = config.n_layers - 1
    return arrays1 + extra * (arrays2 - arrays1), values1 + extra * (values2 - values1)


def _check_sizes(entries, config, path):
    """Every parameter's header matches the config, and the total is bounded, before any data is read."""
    n_arrays, n_values = _implied(config)
    runtime = config.max_len * config.d_model * (1 + 2 * config.n_layers)   # positions, KV cache
    implied = (n_values + runtime) * 8
    if implied > MAX_BYTES // 3:
        raise CheckpointError(f"{path}: the model config implies {implied / 2**30:.1f} GiB of parameters, "
                              f"more than a checkpoint may hold ({MAX_BYTES / 2**30:.0f} GiB with its optimizer state)")
    if n_arrays > len(entries):
        raise CheckpointError(f"{path}: parameters do not match the saved config ({n_arrays} arrays "
                              f"needed, {len(entries)} entries in the file)")
    shapes = param_shapes(config)
    for name, shape in shapes.items():
        entry = entries.get(f"param/{name}")
        if entry is None:
            raise CheckpointError(f"{path}: parameters do not match the saved config (missing {name})")
        if entry.shape != shape or entry.dtype.kind not in _FLOAT_KINDS:
            raise CheckpointError(f"{path}: parameters do not match the saved config ({name} is "
                                  f"{entry.dtype} {entry.shape}, the config needs floats {shape})")
    extra = sorted(k[6:] for k in entries if k.startswith("param/") and k[6:] not in shapes)
    if extra:
        raise CheckpointError(f"{path}: parameters do not match the saved config (unexpected {extra[:5]})")
    params = sum(entries[f"param/{n}"].nbytes for n in shapes)
    state = sum(e.nbytes for k, e in entries.items() if k.startswith("train/"))
    if state > 2 * params + 2**20 or any(e.dtype.kind not in _NUMBER_KINDS
                                         for k, e in entries.items() if k.startswith("train/")):
        raise CheckpointError(f"{path}: the training state ({state / 2**20:.1f} MiB) does not fit "
                              f"a model of {params / 2**20:.1f} MiB")


def _tokenizer(archive, entries, config, path):
    """The saved tokenizer, checked against the saved vocabulary and the model config."""
    if "tokenizer" not in entries:
        return None
    from music_attn.music.tokenizers import Tokenizer    # the music side, only needed here
    vocab = _read_json(archive, entries, "vocab", path) if "vocab" in entries else None
    if vocab is not None and (not isinstance(vocab, list) or len(vocab) != config.vocab_size):
        raise CheckpointError(f"{path}: the saved vocabulary is not a list of {config.vocab_size} tokens "
                              "(the model config's vocab_size)")
    try:
        tokenizer = Tokenizer.from_dict(_read_json(archive, entries, "tokenizer", path))
    except (ValueError, KeyError, TypeError, OverflowError, MemoryError, RecursionError) as exc:
        raise CheckpointError(f"{path}: bad tokenizer config ({type(exc).__name__}: {exc})") from None
    if vocab is not None and list(tokenizer.vocab) != vocab:
        raise CheckpointError(f"{path}: the tokenizer's vocabulary does not match the saved one")
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model "
                              f"config says vocab_size={config.vocab_size}")
    return tokenizer


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`.

    Nothing is trusted before it is checked: each entry's header (dtype, shape)
    is compared with what the saved config implies, and the total size bounded
    (``MAX_BYTES``), before any data is decompressed; JSON entries are bounded in
    size, depth and values; nothing is ever unpickled.

    Raises
    ------
    FileNotFoundError : no such file.
    CheckpointError : not a checkpoint (a directory, FIFO, a plain .npy, a
        foreign archive), truncated, or entries that do not match the saved
        config (the message names the file).
    """
    path = Path(path)
    archive, entries = _open(path)
    with archive:
        _check_format(archive, entries, path)
        config = _model_config(archive, entries, path)
        _check_sizes(entries, config, path)
        tokenizer = _tokenizer(archive, entries, config, path)
        params = {k[len("param/"):]: _read(archive, e, path) for k, e in entries.items() if k.startswith("param/")}
        _check_values(params, path)
        try:
            model = Model(config, params, tokenizer=tokenizer)
        except ValueError as exc:
            raise CheckpointError(f"{path}: parameters do not match the saved config ({exc})") from None
        model.metrics = _metrics(archive, entries, path)
        state = None
        if "train_state" in entries:
            arrays = {k[len("train/"):]: _read(archive, e, path) for k, e in entries.items() if k.startswith("train/")}
            state = {"meta": _read_json(archive, entries, "train_state", path), "arrays": arrays}
    return Checkpoint(model, state)


def _check_values(params, path):
    """Every weight finite and at most MAX_WEIGHT in magnitude; CheckpointError naming the array."""
    for name, value in params.items():
        if not np.isfinite(value).all():
            bad = "NaN" if np.isnan(value).any() else "infinite"
            raise CheckpointError(f"{path}: the weights {name} hold {bad} values; not a usable model")
        if value.size and float(np.max(np.abs(value))) > MAX_WEIGHT:
            raise CheckpointError(f"{path}: the weights {name} reach {float(np.max(np.abs(value))):.3g}, "
                                  f"past any trained model's (at most {MAX_WEIGHT:.0e}); not a usable model")


def _metrics(archive, entries, path):
    """The saved ``metrics`` JSON object ({} when absent)."""
    if "metrics" not in entries:
        return {}
    metrics = _read_json(archive, entries, "metrics", path)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()) \
        if isinstance(metrics, dict) else False
    if not numbers:
        raise CheckpointError(f"{path}: entry 'metrics' is not a JSON object of numbers")
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
