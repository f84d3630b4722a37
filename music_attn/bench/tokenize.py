"""``music-attn bench tokenize``: files/s and notes/s of our tokenizers against references.

Every contender reads the same files from disk in the same run: our REMI and
performance tokenizers (parse + tokenize), ``mido.MidiFile`` alone (parse
only), ``pretty_midi.PrettyMIDI`` alone (load only) and, when installed,
MidiTok's ``REMI`` and ``MIDILike`` (load + tokenize) and symusic's C++ parser
alone (``symusic.Score``, parse only: the limit line, what reading the bytes
costs with no Python in the loop).  Notes/s counts the
pitched notes of the files (as ``read_midi`` finds them) for every contender,
so the columns compare.  The best of a few interleaved rounds is reported;
progress goes to stderr (one step per contender and round).

Files: ``data/**/*.mid`` (the corpus), else the shipped melodies, else any
MIDI file under the current directory.  ``quick`` uses 50 files spread
over the corpus.

Run: ``music-attn bench tokenize [--quick]``.
"""

import time
import warnings
from pathlib import Path

from music_attn._progress import progress
from music_attn.music.midi import read_midi
from music_attn.music.tokenizers import PerformanceTokenizer, RemiTokenizer

__all__ = ["run", "find_files"]

_QUICK_FILES = 50


def find_files(limit=None):
    """The benchmark's MIDI files: the corpus, else the shipped melodies, else any found here."""
    package = Path(__file__).resolve().parents[1]
    for folder in (Path("data"), package.parent / "data", package / "assets" / "melodies", Path(".")):
        files = sorted(p for p in folder.rglob("*.mid") if p.is_file()) if folder.is_dir() else []
        if files:
            return files[:: max(1, len(files) // limit)][:limit] if limit else files  # spread over collections
    return []


def _contenders():
    """(name, function of a path, reference name or None) for everything importable."""
    import mido
    import pretty_midi

    remi, performance = RemiTokenizer(), PerformanceTokenizer()
    rows = [
        ("music_attn REMI", remi.encode, "MidiTok REMI"),
        ("music_attn Performance", performance.encode, "MidiTok MIDILike"),
        ("mido.MidiFile (parse only)", mido.MidiFile, None),
        ("pretty_midi.PrettyMIDI (load only)", lambda p: pretty_midi.PrettyMIDI(str(p)), None),
    ]
    try:
        import miditok
    except ImportError:
        miditok = None
    for name in ("REMI", "MIDILike") if miditok else ():
        tokenizer = getattr(miditok, name)(miditok.TokenizerConfig())
        rows.append((f"MidiTok {name}", tokenizer, None))
    try:
        import symusic
    except ImportError:
        return rows
    rows.append(("symusic.Score (C++ parse only, limit)", lambda p: symusic.Score(str(p)), None))
    return rows


def _time(fn, files):
    start = time.perf_counter()
    for path in files:
        fn(path)
    return time.perf_counter() - start


def measure(files, rounds, bar=None):
    """Best seconds over ``rounds`` for each contender on ``files``: {name: seconds}.

    ``bar`` (from :func:`music_attn._progress.progress`) moves one step per contender and round.
    """
    contenders = _contenders()
    best = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MidiTok and pretty_midi warn about odd files
        for name, fn, _ in contenders:
            _time(fn, files[:3])  # warm-up: imports, caches
        for r in range(rounds):
            for name, fn, _ in contenders:
                best[name] = min(best.get(name, float("inf")), _time(fn, files))
                bar is not None and bar.update(1, f"round {r + 1}/{rounds}: {name}")
    return best, {name: ref for name, _, ref in contenders}


def run(quick=False, files=None):
    """Print the table; returns {name: (files/s, notes/s)}."""
    files = list(files) if files is not None else find_files(_QUICK_FILES if quick else None)
    if not files:
        print("bench tokenize: no MIDI files found (looked in data/, the shipped melodies and here)")
        return {}
    rounds = 3 if quick else 2
    with progress(1 + rounds * len(_contenders()), "bench tokenize") as bar:   # stderr: the table stays clean
        n_notes = sum(len(read_midi(p)) for p in files)
        bar.update(1, f"counted {n_notes} notes in {len(files)} files")
        seconds, references = measure(files, rounds, bar)
    rates = {name: (len(files) / s, n_notes / s) for name, s in seconds.items()}
    print(f"bench tokenize: {len(files)} files, {n_notes} notes ({files[0].parent.parent}/...), best of {rounds} rounds")
    print(f"{'contender':<36} {'files/s':>9} {'notes/s':>11}  ratio")
    for name, (fps, nps) in rates.items():
        ref = references.get(name)
        ratio = f"{nps / rates[ref][1]:.2f}x vs {ref}" if ref in rates else ""
        print(f"{name:<36} {fps:>9.1f} {nps:>11.0f}  {ratio}")
    return rates
