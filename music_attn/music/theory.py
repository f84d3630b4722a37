"""Melody statistics for judging generated music: key, spelling, in-key share, range, repetition.

All functions take plain arrays of MIDI pitches (and durations, for the key),
so they apply equally to generated and to real melodies.

The key is estimated with the Krumhansl-Kessler probe-tone profiles
(Krumhansl 1990): the duration-weighted pitch-class histogram is correlated
with the 24 rotated major and minor profiles and the best one wins.

Spelling (``key_spelling``) follows the key as a musician writes it:

* the tonic is named as in its key signature (F# major, Db major, C# minor,
  Bb minor; a minor key takes the signature of its relative major);
* the seven degrees of the scale get seven consecutive letters (F# minor:
  F# G# A B C# D E);
* in a minor key the raised sixth and seventh are spelled as raised degrees
  (A minor: F#, G#; F# minor: D#, E#, never F);
* any other note is a natural when one of its two neighbouring degrees allows
  it (F in D major), else raised or lowered by its degree: in major #1 b3 #4
  #5 b7 (C# Eb F# G# Bb in C major), in minor b2 #3 #4 (Bb C# D# in A minor),
  never with a double accidental.

Drum notes (channel 10) have no key and no pitch name: ``drum_name`` gives
their General MIDI percussion name.
"""

import numpy as np

__all__ = ["estimate_key", "key_name", "uses_flats", "key_spelling", "spell", "spell_with", "note_name", "spelled_names",
           "drum_name", "piece_key", "in_key_share", "pitch_range", "repetition"]

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
    """``(2, "minor")`` -> ``"D minor"``; the tonic spelled as in its signature (``(1, "major")`` -> Db)."""
    return f"{_tonic(key)} {key[1]}"


_SHARP_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_FLAT_NAMES = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")


def uses_flats(key):
    """Whether ``key`` (tonic pitch class, mode) is written with flats (F, Bb, Eb, Ab, Db and their minors)."""
    tonic, mode = key
    major = tonic if mode == "major" else (tonic + 3) % 12
    return major in (5, 10, 3, 8, 1)


_LETTERS = "CDEFGAB"
_LETTER_PC = (0, 2, 4, 5, 7, 9, 11)
_DEGREES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# Chromatic notes by semitones above the tonic: +1 written as a raised degree, -1 as a lowered one
# (major: #1 b3 #4 #5 b7, as C# Eb F# G# Bb in C; minor: b2 #3 #4, as Bb C# D# in A minor).
_CHROMATIC = {"major": {1: 1, 3: -1, 6: 1, 8: 1, 10: -1}, "minor": {1: -1, 4: 1, 6: 1}}


def _tonic(key):
    """The tonic's name in its key signature: sharps in sharp keys, flats in flat keys."""
    return (_FLAT_NAMES if uses_flats(key) else _SHARP_NAMES)[key[0] % 12]


def _accidental(alter):
    return "#" * alter if alter > 0 else "b" * -alter


def key_spelling(key):
    """How each pitch class is written in ``key``: a list of 12 ``(letter, alter)``, index = pitch class.

    ``alter`` is the accidental in semitones (+1 sharp, -1 flat); rules in the module docstring.
    """
    tonic, mode = key[0] % 12, key[1]
    first = _LETTERS.index(_tonic(key)[0])
    out = [None] * 12
    for degree, step in enumerate(_DEGREES[mode]):                    # the scale: one letter per degree
        letter = _LETTERS[(first + degree) % 7]
        pc = (tonic + step) % 12
        out[pc] = (letter, (pc - _LETTER_PC[_LETTERS.index(letter)] + 6) % 12 - 6)
    if mode == "minor":                                              # raised 6th and 7th: same letters
        for degree, step in ((5, 9), (6, 11)):
            letter, alter = out[(tonic + _DEGREES["minor"][degree]) % 12]
            out[(tonic + step) % 12] = (letter, alter + 1)
    for pc in range(12):
        if out[pc] is None:                                          # a chromatic note
            raised = (out[(pc - 1) % 12][0], out[(pc - 1) % 12][1] + 1)
            lowered = (out[(pc + 1) % 12][0], out[(pc + 1) % 12][1] - 1)
            choices = (raised, lowered) if _CHROMATIC[mode][(pc - tonic) % 12] > 0 else (lowered, raised)
            natural = [c for c in choices if c[1] == 0]
            out[pc] = natural[0] if natural else next((c for c in choices if abs(c[1]) == 1), choices[0])
    return out


def spell(pitch, key):
    """Scientific pitch name of ``pitch`` in ``key``: 65 in F# minor -> ``"E#4"``, 60 in C# minor -> ``"B#3"``."""
    return spell_with(key_spelling(key), pitch)


def spell_with(spelling, pitch):
    """Scientific pitch name of ``pitch`` by a ``key_spelling`` table (the octave follows the letter)."""
    pitch = int(pitch)
    letter, alter = spelling[pitch % 12]
    octave = (pitch - alter - _LETTER_PC[_LETTERS.index(letter)]) // 12 - 1
    return f"{letter}{_accidental(alter)}{octave}"


def drum_name(pitch):
    """The General MIDI percussion name of a drum note (channel 10): 38 -> ``"Acoustic Snare"``."""
    import pretty_midi

    return pretty_midi.note_number_to_drum_name(int(pitch)) or f"drum {int(pitch)}"


def note_name(pitch, flats=False):
    """Scientific pitch name: 60 -> ``"C4"``, 70 -> ``"A#4"``, or ``"Bb4"`` with ``flats``."""
    pitch = int(pitch)
    return f"{(_FLAT_NAMES if flats else _SHARP_NAMES)[pitch % 12]}{pitch // 12 - 1}"


def piece_key(pitches, durations=None, drums=None):
    """The estimated key of the pitched notes (``drums``: bool (N,), notes without a key), or None
    when there are none."""
    pitches = np.asarray(pitches, dtype=np.int64)
    pitched = np.ones(pitches.size, bool) if drums is None else ~np.asarray(drums, bool)
    if not pitched.any():
        return None
    weights = None if durations is None else np.asarray(durations, dtype=np.float64)[pitched]
    with np.errstate(invalid="ignore", divide="ignore"):          # all twelve pitch classes alike
        return estimate_key(pitches[pitched], weights)


def spelled_names(pitches, durations=None, drums=None):
    """Names of ``pitches`` spelled in their estimated key (``key_spelling``); drum notes
    (``drums``: bool (N,)) get their General MIDI names."""
    pitches = np.asarray(pitches, dtype=np.int64)
    drums = np.zeros(pitches.size, bool) if drums is None else np.asarray(drums, bool)
    key = piece_key(pitches, durations, drums) or (0, "major")
    table = key_spelling(key)
    return [drum_name(p) if drum else spell_with(table, p) for p, drum in zip(pitches.tolist(), drums.tolist())]


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

