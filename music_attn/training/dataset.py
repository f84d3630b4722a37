"""Token datasets on disk: one memory-mappable uint16 token file plus a JSON index.

A dataset is a folder::

    DATASET/tokens.u16   every file's token ids back to back, little-endian uint16
    DATASET/index.json   {"format", "version", "tokenizer" (its config), "vocab_size",
                          "n_tokens", "files": [{"file", "split", "offset", "length"}]}

``write_dataset`` tokenizes a MIDI folder (worker processes, the ``.npy``
cache and the progress bar of :func:`music_attn.training.data.tokenize_files`),
streaming a chunk of files at a time to the token file, so a corpus never has
to fit in memory; the train/validation split is the folder's ``MANIFEST.csv``
when it has one, else :func:`~music_attn.training.data.split_for_title`.
``open_dataset`` maps the token file read-only: each sequence is a
``np.memmap`` slice, so training reads only the pages its windows touch.
"""

import json
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from music_attn._io import atomic_folder, atomic_write, output_folder
from music_attn.training import data

__all__ = ["TokenDataset", "write_dataset", "open_dataset", "is_dataset", "corpus_splits", "write_folder_dataset",
           "training_inputs", "folder_tokenizer",
           "FORMAT", "VERSION"]

FORMAT = "music_attn.token_dataset"
VERSION = 1
TOKENS = "tokens.u16"
INDEX = "index.json"
_DTYPE = np.dtype("<u2")
_CHUNK = 256          # files tokenized (by the worker processes) per write


class TokenDataset:
    """A token dataset opened read-only; sequences are memory-mapped slices.

    Attributes
    ----------
    path : Path of the dataset folder.
    files : list of dicts ``file`` (relative to the source folder), ``split``, ``offset``,
        ``length`` (in tokens).
    tokens : np.memmap (n_tokens,) uint16, the whole token file (nothing read yet).
    tokenizer_config : dict, the tokenizer's ``to_dict()``.
    """

    def __init__(self, path, index, tokens):
        self.path, self.files, self.tokens = Path(path), index["files"], tokens
        self.tokenizer_config = index["tokenizer"]
        self.vocab_size = int(index["vocab_size"])

    def __len__(self):
        return len(self.files)

    def __repr__(self):
        return f"TokenDataset({str(self.path)!r}, files={len(self)}, tokens={self.tokens.size:,})"

    @property
    def tokenizer(self):
        """The tokenizer the dataset was written with."""
        from music_attn.music.tokenizers import Tokenizer
        return Tokenizer.from_dict(self.tokenizer_config)

    def sequences(self, split="train"):
        """Token sequences of a split (``"train"``, ``"validation"`` or ``"all"``): memmap slices."""
        if split not in data.SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(data.SPLITS)}")
        return [self.tokens[f["offset"]:f["offset"] + f["length"]]
                for f in self.files if split == "all" or f["split"] == split]


def is_dataset(path):
    """True when ``path`` is a folder holding a dataset index."""
    return (Path(path) / INDEX).is_file()


def open_dataset(path):
    """Open a dataset written by :func:`write_dataset` (reads only its index).

    Raises ValueError naming the folder when the index or token file is
    missing, of another format, or inconsistent.
    """
    path = Path(path)
    index = _read_index(path)
    tokens_path = path / TOKENS
    size = tokens_path.stat().st_size if tokens_path.is_file() else -1
    if size != index["n_tokens"] * _DTYPE.itemsize:
        raise ValueError(f"{path}: {TOKENS} holds {max(size, 0)} bytes, the index expects "
                         f"{index['n_tokens']} tokens")
    tokens = (np.memmap(tokens_path, dtype=_DTYPE, mode="r") if index["n_tokens"]
              else np.zeros(0, _DTYPE))
    return TokenDataset(path, index, tokens)


def _read_index(path):
    try:
        index = json.loads((path / INDEX).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: not a token dataset (no {INDEX})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable {INDEX} ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
        raise ValueError(f"{path}: not a version-{VERSION} token dataset")
    end = 0
    for f in index["files"]:
        if f["offset"] != end or f["length"] < 0:
            raise ValueError(f"{path}: index offsets are not contiguous at {f.get('file')!r}")
        end += f["length"]
    if end != index["n_tokens"]:
        raise ValueError(f"{path}: index lengths sum to {end}, not n_tokens={index['n_tokens']}")
    return index


# --------------------------------------------------------------------------- writing

def _splits(folder, paths):
    """Split of each path: the manifest's when the folder has one, else by title hash."""
    if (folder / data.MANIFEST).is_file():
        by_file = {(folder / r["file"]).resolve(): r["split"] for r in data.read_manifest(folder)}
        return [by_file.get(p.resolve(), data.split_for_title(p.stem)) for p in paths]
    return [data.split_for_title(p.stem) for p in paths]


def _check_output(out, folder):
    """Refuse to replace anything but an earlier dataset, or to write into a missing folder or the source."""
    if os.fspath(out).rstrip("/") and Path(out).resolve() == Path(folder).resolve():
        raise ValueError(f"{out}: is the folder being tokenized; write the dataset to another folder")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ValueError(f"{out}: exists and is not a dataset folder; not replacing it")
    output_folder(out)                              # its parent folder must exist
    if out.is_dir() and any(out.iterdir()) and not is_dataset(out):
        raise ValueError(f"{out}: a non-empty folder that is not a dataset; not replacing it")


def write_dataset(folder, out, tokenizer, *, jobs=1, cache=True, cache_dir=None, progress=True,
                  failures=None):
    """Tokenize every MIDI file under ``folder`` into the dataset ``out``; returns it opened.

    Parameters
    ----------
    folder : path-like, a folder of MIDI files (with an optional MANIFEST.csv).
    out : path-like, the dataset folder to write (an earlier dataset there is replaced
        whole, atomically; anything else there is an error).  It is built in a
        temporary folder beside it (:func:`music_attn._io.atomic_folder`): a killed
        run leaves no partial dataset, and the next write removes its leftovers.
    tokenizer : Tokenizer with at most 65,536 tokens.
    jobs, cache, cache_dir, failures : as :func:`music_attn.training.data.tokenize_files`.
    progress : show a progress bar over the files.
    """
    folder, out = Path(folder), Path(out)
    if tokenizer.vocab_size > np.iinfo(_DTYPE).max + 1:
        raise ValueError(f"{tokenizer.vocab_size} tokens do not fit in uint16")
    _check_output(out, folder)
    paths = data.list_midi_files(folder)
    splits = _splits(folder, paths)
    with atomic_folder(out) as tmp:                 # a killed run leaves nothing at `out`
        files = _write_tokens(tmp / TOKENS, folder, paths, splits, tokenizer, jobs, cache,
                              cache_dir, progress, failures)
        _write_index(tmp, files, tokenizer, folder)
    return open_dataset(out)


def write_folder_dataset(files, out, tokenizer, *, jobs=1):
    """``tokenize DIR --out DATASET``: the dataset of the one folder in ``files`` written to ``out``
    (ValueError for anything but one folder); returns the line saying what was written."""
    if len(files) != 1 or not Path(files[0]).is_dir():
        raise ValueError("--out takes one folder of MIDI files: tokenize DIR --out DATASET")
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    failures = []
    ds = write_dataset(files[0], out, tokenizer, jobs=jobs, failures=failures)
    counts = {s: sum(f["split"] == s for f in ds.files) for s in ("train", "validation")}
    return (f"wrote {out}: {len(ds)} files ({counts['train']} train, {counts['validation']} "
            f"validation), {ds.tokens.size:,} tokens, {len(failures)} unreadable files skipped")


def _write_tokens(path, folder, paths, splits, tokenizer, jobs, cache, cache_dir, progress, failures):
    """Append each chunk's arrays to the token file; the index entries of the files kept
    (``file`` relative to ``folder``)."""
    files, offset = [], 0
    with open(path, "wb") as f, tqdm(total=len(paths), desc="tokenize", unit="file",
                                     disable=not progress) as bar:
        for lo in range(0, len(paths), _CHUNK):
            chunk = paths[lo:lo + _CHUNK]
            arrays, kept = data.tokenize_files(chunk, tokenizer, jobs=jobs, cache=cache,
                                               cache_dir=cache_dir, progress=False,
                                               failures=failures, return_paths=True)
            split_of = dict(zip(chunk, splits[lo:lo + _CHUNK]))
            for ids, p in zip(arrays, kept):
                f.write(np.asarray(ids, dtype=_DTYPE).tobytes())
                files.append({"file": p.relative_to(folder).as_posix(), "split": split_of[p], "offset": offset,
                              "length": int(len(ids))})
                offset += len(ids)
            bar.update(len(chunk))
        f.flush()
        os.fsync(f.fileno())
    return files


def _write_index(folder, files, tokenizer, source):
    index = {"format": FORMAT, "version": VERSION, "source": str(source),
             "tokenizer": tokenizer.to_dict(), "vocab_size": int(tokenizer.vocab_size),
             "n_tokens": sum(f["length"] for f in files), "files": files}
    with atomic_write(folder / INDEX, "w") as f:
        json.dump(index, f)


def corpus_splits(folder, tokenizer, *, jobs=1, progress=True):
    """(train, validation) token sequences of a folder: its manifest split, else by title hash.

    A token dataset gives memory-mapped sequences (its tokenizer must be the model's).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    if is_dataset(folder):
        ds = open_dataset(folder)
        if ds.tokenizer_config != tokenizer.to_dict():
            raise ValueError(f"{folder}: tokenized with {ds.tokenizer_config}, not the model's tokenizer")
        return ds.sequences("train") or ds.sequences("all"), ds.sequences("validation")
    options = dict(jobs=jobs, progress=progress)
    if (folder / data.MANIFEST).is_file():
        return (data.load_corpus(folder, tokenizer, "train", **options),
                data.load_corpus(folder, tokenizer, "validation", **options))
    seqs, paths = data.tokenize_folder(folder, tokenizer, return_paths=True, **options)
    if not seqs:
        raise ValueError(f"{folder}: no readable MIDI files")
    split = [data.split_for_title(Path(p).stem) for p in paths]
    train = [s for s, k in zip(seqs, split) if k == "train"] or seqs
    return train, [s for s, k in zip(seqs, split) if k == "validation"]


def training_inputs(folder):
    """The files training reads from ``folder`` (its MIDI files and manifest, or a token dataset's
    two files), which no output may replace; [] when ``folder`` is not a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    if is_dataset(folder):
        return [folder / INDEX, folder / TOKENS]
    return [folder / data.MANIFEST, *data.list_midi_files(folder)]


def folder_tokenizer(folder, name):
    """The tokenizer of a token dataset at ``folder``, else a new one of kind ``name``
    ('remi' or 'performance')."""
    from music_attn.music.tokenizers import PerformanceTokenizer, RemiTokenizer
    if Path(folder).is_dir() and is_dataset(folder):
        return open_dataset(folder).tokenizer
    return RemiTokenizer() if name == "remi" else PerformanceTokenizer()
