"""Corpus data: MIDI files -> cached token arrays, the train/validation split,
transposition augmentation, training windows and the packaged melodies.

Shape legend: B batch, T time (window length).  A training window holds
T + 1 tokens: inputs ``w[:, :-1]`` and next-token targets ``w[:, 1:]``.

Tokenized files are cached as ``.npy`` arrays under
``<cache_dir>/<tokenizer fingerprint>/<file content sha256>.npy``.  The
fingerprint hashes the tokenizer's class, config and vocabulary, so a changed
tokenizer never reads a stale cache, and the key is the file's content (not
its name or mtime), so an edited file is tokenized again.
"""

import csv
import hashlib
import importlib.resources
import json
import logging
import os
import re
import unicodedata
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from music_attn._io import atomic_write
from music_attn.errors import MidiError

__all__ = [
    "choose_melodies",
    "copy_melodies",
    "melody_table",
    "VALIDATION_FRACTION",
    "augment_transpose",
    "default_cache_dir",
    "list_midi_files",
    "load_corpus",
    "load_split",
    "melody_catalogue",
    "read_manifest",
    "sample_windows",
    "shipped_melodies",
    "split_for_title",
    "tokenize_files",
    "tokenize_folder",
    "tokenizer_fingerprint",
    "tune_key",
]

log = logging.getLogger(__name__)

VALIDATION_FRACTION = 0.1  # one tune in ten is held out
CACHE_FORMAT = 1  # bump when the cached array layout changes
MIDI_SUFFIXES = (".mid", ".midi", ".kar")
SPLITS = ("train", "validation", "all")
MANIFEST = "MANIFEST.csv"
TRANSPOSE_RANGE = (-5, 6)  # semitones [low, high): a fourth either way keeps tunes singable


# ----------------------------------------------------------------------------- split


def tune_key(title):
    """Normalize a tune title so that spellings of one tune share a key.

    Accents, case, punctuation, a leading article and a trailing dance name
    after `` -- `` (Ryan's style, ``"Acacia -- Reel"``) are dropped:
    ``"The Acacia"``, ``"Acacia -- Reel"`` and ``"acacia"`` all give ``"acacia"``.
    """
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode().lower()
    text = text.split(" -- ")[0].strip()
    text = re.sub(r"^(the|a|an)\s+", "", text)
    return re.sub(r"[^a-z0-9]+", "", text)


def split_for_title(title, validation_fraction=VALIDATION_FRACTION):
    """Return ``"train"`` or ``"validation"`` for a tune, from a hash of its title.

    The split is by tune, not by file: every setting of a tune (the same
    title in two collections, or two harmonizations of one chorale) lands in
    the same split, so validation tunes are never seen in training.  It is a
    pure function of the title, so rebuilding the corpus keeps it stable.
    """
    digest = hashlib.sha256(tune_key(title).encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
    return "validation" if u < validation_fraction else "train"


def read_manifest(data_dir):
    """Read ``<data_dir>/MANIFEST.csv`` as a list of dicts (one per MIDI file)."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no corpus manifest (build it with scripts/build_corpus.py)")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = {"file", "collection", "title", "split"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path}: manifest lacks column(s) {sorted(missing)}")
    return rows


def load_split(data_dir, split):
    """Paths of the MIDI files of one split (``"train"``, ``"validation"`` or ``"all"``).

    Returns
    -------
    list of pathlib.Path
        In manifest order (sorted by file name).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    rows = read_manifest(data_dir)
    return [Path(data_dir) / r["file"] for r in rows if split == "all" or r["split"] == split]


# ----------------------------------------------------------------------------- tokenizing


def default_cache_dir():
    """``$XDG_CACHE_HOME/music_attn/tokens`` (``~/.cache/music_attn/tokens`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "music_attn" / "tokens"


def tokenizer_fingerprint(tokenizer):
    """A short hash of the tokenizer's class, config and vocabulary (the cache namespace)."""
    blob = {"format": CACHE_FORMAT, "class": type(tokenizer).__name__,
            "config": tokenizer.to_dict(), "vocab": list(tokenizer.vocab)}
    text = json.dumps(blob, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def list_midi_files(folder):
    """Every MIDI file under ``folder`` (recursively, hidden folders skipped), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    found = []
    for path in folder.rglob("*"):
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
        if not hidden and path.suffix.lower() in MIDI_SUFFIXES and path.is_file():
            found.append(path)
    return sorted(found)


def _file_digest(path):
    """sha256 of a file's bytes; an unreadable file raises MidiError naming it."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:32]
    except OSError as exc:
        raise MidiError(f"{path}: {exc.strerror or exc}") from None


def _encode(tokenizer, path, cache_path):
    """Tokenize one file (and cache it); return ``(ids, None)`` or ``(None, message)``."""
    try:
        ids = np.asarray(tokenizer.encode(path).ids, dtype=np.int32)
    except MidiError as exc:
        return None, str(exc)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)      # the cache's own folders
        with atomic_write(cache_path, "wb") as f:
            np.save(f, ids, allow_pickle=False)
    return ids, None


_WORKER_TOKENIZER = None


def _init_worker(config):
    """Process-pool initializer: rebuild the tokenizer once per worker from its config."""
    global _WORKER_TOKENIZER
    from music_attn.music.tokenizers import Tokenizer

    _WORKER_TOKENIZER = Tokenizer.from_dict(config)


def _encode_in_worker(job):
    """Process-pool task: ``(path, cache_path)`` -> ``(ids, None)`` or ``(None, message)``."""
    return _encode(_WORKER_TOKENIZER, *job)


def _load_cached(cache_path):
    """The cached array, or None when absent or unreadable (it is then rebuilt)."""
    if cache_path is None or not cache_path.is_file():
        return None
    try:
        return np.load(cache_path, allow_pickle=False).astype(np.int32, copy=False)
    except (OSError, ValueError, EOFError):
        return None


def _plan(paths, cache_root):
    """For each path: ``(cached ids or None, cache path or None, error or None)``."""
    plan = []
    for path in paths:
        try:
            digest = _file_digest(path)
        except MidiError as exc:
            plan.append((None, None, str(exc)))
            continue
        cache_path = None if cache_root is None else cache_root / f"{digest}.npy"
        plan.append((_load_cached(cache_path), cache_path, None))
    return plan


def _run_jobs(tokenizer, jobs, todo, bar):
    """Tokenize ``todo`` [(index, path, cache_path)] in ``jobs`` processes.

    Yields ``(index, result)`` in the order of ``todo``.  Worker processes
    rebuild the tokenizer from ``tokenizer.to_dict()`` (``Tokenizer.from_dict``).
    """
    if jobs == 1 or len(todo) <= 1:
        for index, path, cache_path in todo:
            yield index, _encode(tokenizer, path, cache_path)
            bar.update()
        return
    args = [(path, cache_path) for _, path, cache_path in todo]
    workers = min(jobs, len(todo))
    chunk = max(1, len(todo) // (4 * workers))
    with ProcessPoolExecutor(workers, initializer=_init_worker,
                             initargs=(tokenizer.to_dict(),)) as pool:
        for (index, _, _), result in zip(todo, pool.map(_encode_in_worker, args, chunksize=chunk)):
            yield index, result
            bar.update()


def tokenize_files(paths, tokenizer, *, jobs=1, cache_dir=None, cache=True, progress=True,
                   failures=None, return_paths=False):
    """Tokenize MIDI files to int32 id arrays, reading and filling the ``.npy`` cache.

    Parameters
    ----------
    paths : iterable of path-like
    tokenizer : Tokenizer
        Anything with ``encode``, ``to_dict`` and ``vocab`` (see ``music_attn.music.tokenizers``).
    jobs : int
        Worker processes; ``1`` tokenizes in this process.  Results do not
        depend on ``jobs``.  Workers rebuild the tokenizer from its
        ``to_dict()``, so it must be one ``Tokenizer.from_dict`` knows.
    cache_dir : path-like, optional
        Cache root; default ``default_cache_dir()``.  ``cache=False`` disables it.
    progress : bool
        Show a tqdm progress bar (on stderr).
    failures : list, optional
        Receives ``(path, message)`` for every file that could not be read.
        Failed files are logged as warnings and skipped, never fatal.
    return_paths : bool
        Also return the paths of the files that were tokenized.

    Returns
    -------
    list of ndarray (n,) int32
        One array per readable file, in the order of ``paths``; with
        ``return_paths`` a tuple ``(arrays, paths)``.
    """
    paths = [Path(p) for p in paths]
    if int(jobs) < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    cache_root = None
    if cache:
        cache_root = Path(cache_dir or default_cache_dir()) / tokenizer_fingerprint(tokenizer)
    plan = _plan(paths, cache_root)
    results = [(ids, err) for ids, _, err in plan]
    todo = [(i, p, c) for i, (p, (ids, c, err)) in enumerate(zip(paths, plan))
            if ids is None and err is None]
    with tqdm(total=len(paths), initial=len(paths) - len(todo), desc="tokenize", unit="file",
              disable=not progress, leave=False) as bar:
        for index, result in _run_jobs(tokenizer, int(jobs), todo, bar):
            results[index] = result
    return _collect(paths, results, failures, return_paths)


def _collect(paths, results, failures, return_paths):
    """Drop and report failed files; return the arrays (and their paths)."""
    arrays, kept = [], []
    for path, (ids, error) in zip(paths, results):
        if error is not None:
            log.warning("skipped %s", error)
            if failures is not None:
                failures.append((path, error))
            continue
        arrays.append(ids)
        kept.append(path)
    return (arrays, kept) if return_paths else arrays


def tokenize_folder(folder, tokenizer, *, jobs=1, cache_dir=None, cache=True, progress=True,
                    failures=None, return_paths=False):
    """Tokenize every MIDI file under ``folder``; see :func:`tokenize_files`.

    Returns
    -------
    list of ndarray (n,) int32
        One array per readable file, in sorted path order.
    """
    return tokenize_files(list_midi_files(folder), tokenizer, jobs=jobs, cache_dir=cache_dir,
                          cache=cache, progress=progress, failures=failures,
                          return_paths=return_paths)


def load_corpus(data_dir, tokenizer, split="train", **options):
    """Tokenize one split of a corpus folder with a ``MANIFEST.csv``.

    ``options`` are those of :func:`tokenize_files` (``jobs``, ``cache_dir`` ...).
    """
    return tokenize_files(load_split(data_dir, split), tokenizer, **options)


# ----------------------------------------------------------------------------- augmentation


def pitch_table(tokenizer):
    """MIDI pitch carried by each token id, -1 for tokens that carry none (the tokenizer's answer).

    Returns
    -------
    ndarray (V,) int64
    """
    return np.asarray(tokenizer.pitch_of(), dtype=np.int64)


def augment_transpose(ids, tokenizer, rng, low=TRANSPOSE_RANGE[0], high=TRANSPOSE_RANGE[1]):
    """Transpose a token sequence by a random number of semitones in ``[low, high)``.

    Only shifts that keep every pitch inside the tokenizer's pitch range are
    drawn (uniformly); a sequence without notes comes back unchanged.

    Parameters
    ----------
    ids : array_like (n,) int
    tokenizer : Tokenizer
        Provides ``pitch_of``, ``pitch_range`` and ``transpose(ids, semitones)``.
    rng : numpy.random.Generator
    low, high : int
        Half-open range of shifts, as in ``rng.integers``: -5 ... +5 by default.

    Returns
    -------
    ndarray (n,) int32
    """
    if low >= high:
        raise ValueError(f"empty transposition range [{low}, {high})")
    ids = np.asarray(ids, dtype=np.int32)
    pitches = pitch_table(tokenizer)[ids]
    pitches = pitches[pitches >= 0]
    if pitches.size == 0:
        return ids.copy()
    lo, hi = tokenizer.pitch_range
    shifts = np.arange(low, high)
    shifts = shifts[(pitches.min() + shifts >= lo) & (pitches.max() + shifts <= hi)]
    if shifts.size == 0:
        return ids.copy()
    k = int(rng.choice(shifts))
    return np.asarray(tokenizer.transpose(ids, k), dtype=np.int32)


# ----------------------------------------------------------------------------- batches


def sample_windows(sequences, batch_size, length, rng, *, pad_id=0, align=1):
    """Draw ``batch_size`` random windows of ``length + 1`` consecutive tokens.

    A sequence is picked with probability proportional to its length (so every
    token is about equally likely to be seen), then a start uniformly among
    the multiples of ``align`` where a full window fits.  A sequence shorter than
    ``length + 1`` gives its whole self, right-padded with ``pad_id``.

    Returns
    -------
    ndarray (B, T + 1) int32
    """
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    if batch_size < 1 or length < 1:
        raise ValueError(f"batch_size and length must be positive, got {batch_size}, {length}")
    if lengths.sum() == 0:
        raise ValueError("no tokens to sample windows from")
    picks = rng.choice(len(lengths), size=batch_size, p=lengths / lengths.sum())
    out = np.full((batch_size, length + 1), pad_id, dtype=np.int32)
    for row, i in enumerate(picks):
        start = rng.integers(0, max(lengths[i] - length - 1, 0) // align + 1) * align
        window = np.asarray(sequences[i][start:start + length + 1], dtype=np.int32)
        out[row, :window.size] = window
    return out


# ----------------------------------------------------------------------------- melodies


def _melody_folder():
    """The packaged ``music_attn/assets/melodies`` folder."""
    return Path(str(importlib.resources.files("music_attn") / "assets" / "melodies"))


def shipped_melodies():
    """Paths of the example melodies that ship inside the package, sorted by name.

    They come from the validation split of the corpus, so a model trained on
    the training split has never seen them.
    """
    folder = _melody_folder()
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in MIDI_SUFFIXES)


def melody_catalogue():
    """The rows of ``melodies.csv`` (file, title, collection, metre, key, source) plus ``path``."""
    folder = _melody_folder()
    with open(folder / "melodies.csv", newline="", encoding="utf-8") as f:
        return [{**row, "path": folder / row["file"]} for row in csv.DictReader(f)]


def choose_melodies(names=()):
    """The catalogue rows of ``names`` (all when empty); MusicAttnError names an unknown one."""
    from music_attn.errors import MusicAttnError

    rows = melody_catalogue()
    by_stem = {Path(r["file"]).stem: r for r in rows}
    unknown = [n for n in names if Path(n).stem not in by_stem or Path(n).suffix not in ("", ".mid")]
    if unknown:
        raise MusicAttnError(f"no shipped melody named {unknown[0]!r} (choose from: {', '.join(sorted(by_stem))})")
    return [by_stem[Path(n).stem] for n in dict.fromkeys(names)] if names else rows


def melody_table(rows):
    """The table ``music-attn examples`` prints of catalogue ``rows`` (file, metre, key, title)."""
    width, keys = max(len(r["file"]) for r in rows), max(len(r["key"]) for r in rows)
    lines = [f"{'file':<{width}}  {'metre':<5}  {'key':<{keys}}  title"]
    lines += [f"{r['file']:<{width}}  {r['metre']:<5}  {r['key']:<{keys}}  {r['title']}" for r in rows]
    return "\n".join(lines + ["copy them here with: music-attn examples --copy"])


def copy_melodies(rows, folder, *, force=False):
    """Copy the shipped melodies of catalogue ``rows`` into ``folder`` (created if new, its parent
    must exist), all or none; returns the (row, target) pairs written.  An identical file is
    left as it is; a different one is refused (OutputError) unless ``force`` (which also replaces
    read-only files)."""
    from music_attn._io import atomic_outputs, atomic_write, output_folder
    from music_attn.errors import OutputError

    copies = []
    for row in rows:
        target = folder / row["file"]
        if target.exists() and target.is_file() and target.read_bytes() == row["path"].read_bytes():
            continue
        if target.exists() and not force:
            raise OutputError(f"{target}: already exists and differs from the shipped melody "
                              "(nothing copied; --force replaces it)")
        copies.append((row, target))
    output_folder(folder, create=True)
    with atomic_outputs([target for _, target in copies], force=force) as temps:
        for (row, _), tmp in zip(copies, temps):
            with atomic_write(tmp) as f:               # an OS error names the copy (a full disk)
                f.write(row["path"].read_bytes())
    return copies
