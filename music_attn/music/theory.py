"""Melody statistics for judging generated music: key, in-key share, range, repetition.

All functions take plain arrays of MIDI pitches (and durations, for the key),
so they apply equally to generated and to real melodies.

The key is estimated with the Krumhansl-Kessler probe-tone profiles
(Krumhansl 1990): the duration-weighted pitch-class histogram is correlated
with the 24 rotated major and minor profiles and the best one wins.
"""

import numpy as np

__all__ = ["estimate_key", "key_name", "uses_flats", "note_name", "spelled_names",
           "in_key_share", "pitch_range", "repetition"]

# Krumhansl & Kessler (1982) probe-tone ratings, tonic first.
_MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
# Scale degrees counted as "in the key": major scale; for minor, natural minor plus the raised
# 6th and 7th of the melodic/harmonic forms, which folk tunes and chorales use all the time.
_MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
_MINOR_SCALE = (0, 2, 3, 5, 7, 8, 9, 10, 11)
_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


def estimate_key(pitches, durations=None):
    """Best-correlating key of a melody: ``(tonic pitch class, "major" | "minor")``."""
    pitches = np.asarray(pitches, dtype=np.int64)
    if pitches.size == 0:
        raise ValueError("cannot estimate the key of an empty melody")
    weights = np.ones(pitches.size) if durations is None else np.asarray(durations, dtype=np.float64)
    histogram = np.bincount(pitches % 12, weights=weights, minlength=12)
    best = max(
        ((np.corrcoef(histogram, np.roll(profile, tonic))[0, 1], tonic, mode)
         for mode, profile in (("major", _MAJOR_PROFILE), ("minor", _MINOR_PROFILE))
         for tonic in range(12)),
        key=lambda item: np.nan_to_num(item[0], nan=-2.0),
    )
    return best[1], best[2]


def key_name(key):
    """``(2, "minor")`` -> ``"D minor"``."""
    return f"{_NAMES[key[0]]} {key[1]}"


_SHARP_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_FLAT_NAMES = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")


def uses_flats(key):
    """Whether ``key`` (tonic pitch class, mode) is written with flats (F, Bb, Eb, Ab, Db and their minors)."""
    tonic, mode = key
    major = tonic if mode == "major" else (tonic + 3) % 12
    return major in (5, 10, 3, 8, 1)


def note_name(pitch, flats=False):
    """Scientific pitch name: 60 -> ``"C4"``, 70 -> ``"A#4"``, or ``"Bb4"`` with ``flats``."""
    pitch = int(pitch)
    return f"{(_FLAT_NAMES if flats else _SHARP_NAMES)[pitch % 12]}{pitch // 12 - 1}"


def spelled_names(pitches, durations=None):
    """Names of ``pitches`` spelled in their estimated key (flats in flat keys); sharps when
    there are no notes or no key stands out."""
    pitches = np.asarray(pitches, dtype=np.int64)
    flats = False
    if pitches.size:
        with np.errstate(invalid="ignore", divide="ignore"):      # all twelve pitch classes alike
            flats = uses_flats(estimate_key(pitches, durations))
    return [note_name(p, flats) for p in pitches.tolist()]


def in_key_share(pitches, key):
    """Share of notes whose pitch class belongs to ``key``'s scale (see the module docstring)."""
    pitches = np.asarray(pitches, dtype=np.int64)
    if pitches.size == 0:
        return float("nan")
    tonic, mode = key
    scale = _MAJOR_SCALE if mode == "major" else _MINOR_SCALE
    return float(np.isin((pitches - tonic) % 12, scale).mean())


def pitch_range(pitches):
    """Highest minus lowest pitch, in semitones (0 for fewer than one note)."""
    pitches = np.asarray(pitches)
    return int(pitches.max() - pitches.min()) if pitches.size else 0


def repetition(pitches, n=4):
    """Share of the melody's interval n-grams (n intervals) that already occurred earlier in it.

    Transposition-invariant (it looks at intervals), 0 for a melody that never
    repeats a figure, close to 1 for one that loops a single figure.
    """
    intervals = np.diff(np.asarray(pitches, dtype=np.int64))
    grams = [tuple(intervals[i : i + n]) for i in range(intervals.size - n + 1)]
    if not grams:
        return float("nan")
    seen, repeats = set(), 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams)

