"""Build the POP909 training files (melody and piano, on the beat grid) from a POP909 checkout.

Run from the repository root (the raw data stays outside the repository)::

    git clone https://github.com/music-x-lab/POP909-Dataset /tmp/POP909-Dataset
    python scripts/build_pop909.py --source /tmp/POP909-Dataset --out data/pop909

POP909 (Wang, Chen et al., ISMIR 2020; MIT licence) holds 909 Chinese pop
songs, each a piano arrangement in one MIDI file with three tracks: MELODY
(the sung line), BRIDGE (instrumental lines between phrases) and PIANO (the
accompaniment), plus beat, chord and key annotations.  For each song this
writes two files the training reads:

* ``melody/NNN.mid``: the MELODY track alone (a one-line melody),
* ``piano/NNN.mid``: the PIANO track alone (the accompaniment, chords),
* ``file/NNN.mid``: the song's own MIDI file, byte for byte (all three tracks,
  with the file's own timing: the way a user's pop file reaches the model).

In the melody and piano files BRIDGE is left out (a second melodic line that
would cross the melody).  Onsets and ends are put on the grid of 12 positions per quarter note counted
from the annotated beats (``beat_midi.txt``), so each beat is one quarter
note and each annotated downbeat a bar line: time signatures follow the
downbeats (4/4 mostly, 2/4 or 3/4 where a bar is shorter) and tempo changes
follow the beats.  Velocities are kept.

Split (by song number, deterministic): 001-100 is POP909's ``test`` split,
never used for training or for choosing anything; of the rest, every song
whose number ends in 0 or 5 is ``validation`` (161 songs) and the others
are ``train`` (648).  ``MANIFEST.csv`` in the output folder lists every file
with its song, part, split, notes, bars and metre.  The output folder is
git-ignored; the build is deterministic.
"""

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from music_attn._io import atomic_write
from music_attn.music.midi import read_midi
from music_attn.music.score import NOTE_DTYPE, Score

REPO = Path(__file__).resolve().parent.parent
TPQ = 480                       # ticks per quarter note of the files written
STEPS = 12                      # grid positions per beat (sixteenths and triplets)
PARTS = {"melody": "MELODY", "piano": "PIANO"}   # file folder -> POP909 track name
TEST_SONGS = range(1, 101)      # POP909's own test split
FIELDS = ("file", "collection", "title", "song", "part", "split", "notes", "bars", "metre")


def split_of(song):
    """``test`` for songs 1-100; ``validation`` for numbers ending in 0 or 5; else ``train``."""
    if song in TEST_SONGS:
        return "test"
    return "validation" if song % 5 == 0 else "train"


def read_beats(folder):
    """Beat times (seconds, (B,)) and downbeat flags (bool (B,)) from ``beat_midi.txt``."""
    table = np.loadtxt(folder / "beat_midi.txt", ndmin=2)
    return table[:, 0], table[:, 2] > 0


def beat_positions(times, beat_times):
    """Times (seconds) -> beats counted from the first annotated beat, on the grid (float)."""
    k = np.clip(np.searchsorted(beat_times, times, side="right") - 1, 0, len(beat_times) - 2)
    span = beat_times[k + 1] - beat_times[k]
    frac = (times - beat_times[k]) / span
    return np.round((k + frac) * STEPS) / STEPS


def metre_changes(downbeats):
    """``(beat, beats in the bar)`` at each annotated downbeat where the bar length changes."""
    beats = np.flatnonzero(downbeats)
    if len(beats) < 2:
        return [(int(beats[0]) if len(beats) else 0, 4)]
    lengths = np.append(np.diff(beats), np.diff(beats)[-1])
    out = []
    for beat, length in zip(beats, lengths):
        if 1 <= length <= 8 and (not out or length != out[-1][1]):
            out.append((int(beat), int(length)))
    return out or [(int(beats[0]), 4)]


def tempo_changes(beat_times):
    """``(beat, microseconds per beat)`` wherever the beat's length changes by more than 1%."""
    out = []
    for beat, span in enumerate(np.diff(beat_times)):
        us = round(span * 1e6)
        if not out or abs(us - out[-1][1]) > 0.01 * out[-1][1]:
            out.append((beat, us))
    return out


def song_part(score, track_name, beat_times, shift):
    """The notes of one track on the grid: NOTE_DTYPE with ticks counted from the new bar 1."""
    index = [i for i, name in enumerate(score.track_names) if name.strip().upper() == track_name]
    notes = score.notes[np.isin(score.notes["track"], index)]
    start = beat_positions(notes["start"], beat_times) + shift
    end = np.maximum(beat_positions(notes["end"], beat_times) + shift, start + 1 / STEPS)
    keep = start >= 0
    out = np.zeros(int(keep.sum()), NOTE_DTYPE)
    out["pitch"], out["velocity"] = notes["pitch"][keep], notes["velocity"][keep]
    out["start_tick"] = np.round(start[keep] * TPQ).astype(np.int64)
    out["end_tick"] = np.round(end[keep] * TPQ).astype(np.int64)
    order = np.lexsort((out["pitch"], out["start_tick"]))
    out = out[order]
    # one key cannot sound twice at once: a note ends where the next of its pitch starts
    for pitch in np.unique(out["pitch"]):
        rows = np.flatnonzero(out["pitch"] == pitch)
        nxt = out["start_tick"][rows[1:]]
        out["end_tick"][rows[:-1]] = np.minimum(out["end_tick"][rows[:-1]], nxt)
    return out[out["end_tick"] > out["start_tick"]]


def convert(folder, song):
    """One song -> ``{part: (Score, bars, metre)}``.

    Annotated beat ``b`` becomes quarter note ``b + shift`` of the file, with
    ``shift`` the fewest beats that put the first downbeat on a bar line.
    """
    score = read_midi(folder / f"{song:03d}.mid")
    beat_times, downbeats = read_beats(folder)
    metres = metre_changes(downbeats)
    first_down, bar_len = metres[0]
    shift = (-first_down) % bar_len
    signatures = [(0, bar_len, 4)] + [((b + shift) * TPQ, n, 4) for b, n in metres[1:]]
    tempos = [(0 if not k else (b + shift) * TPQ, us) for k, (b, us) in enumerate(tempo_changes(beat_times))]
    title = f"POP909 {song:03d}"
    out = {}
    for part, track in PARTS.items():
        notes = song_part(score, track, beat_times, shift)
        notes["track"] = 1
        made = Score.from_ticks(notes, TPQ, tempos=tempos, time_signatures=signatures,
                                track_names=(title, track.capitalize()), name=title)
        bars = len(np.unique(made.notes["start_tick"] // (TPQ * bar_len)))
        out[part] = (made, bars, ";".join(dict.fromkeys(f"{n}/{d}" for _, n, d in signatures)))
    return out


def songs(source):
    """``(number, folder)`` of every song folder under ``source`` (the checkout or its POP909/)."""
    root = source / "POP909" if (source / "POP909").is_dir() else source
    found = sorted((int(p.name), p) for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    if not found:
        raise SystemExit(f"{source}: no POP909 song folders (001 ... 909) found")
    return found


def _copy_file(folder, song, out_dir):
    """The song's own MIDI file, copied byte for byte to ``file/NNN.mid``; its manifest row."""
    source = folder / f"{song:03d}.mid"
    file = f"file/{song:03d}.mid"
    (out_dir / "file").mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / file, "wb") as f:
        f.write(source.read_bytes())
    score = read_midi(source)
    signatures = list(score.time_signatures) or [(0, 4, 4)]
    bar = score.ticks_per_beat * 4 * signatures[0][1] // signatures[0][2]
    bars = len(np.unique(score.notes["start_tick"] // bar))
    metre = ";".join(dict.fromkeys(f"{n}/{d}" for _, n, d in signatures))
    return {"file": file, "collection": "pop909-file", "title": f"POP909 {song:03d}", "song": song,
            "part": "file", "split": split_of(song), "notes": len(score.notes), "bars": bars, "metre": metre}


def build(source, out_dir, limit=0):
    """Write every song's melody and piano files and the manifest; return the rows."""
    rows = []
    for song, folder in songs(source)[: limit or None]:
        for part, (made, bars, metre) in convert(folder, song).items():
            file = f"{part}/{song:03d}.mid"
            (out_dir / part).mkdir(parents=True, exist_ok=True)
            with atomic_write(out_dir / file, "wb") as f:
                made.to_mido().save(file=f)
            rows.append({"file": file, "collection": f"pop909-{part}", "title": made.name, "song": song,
                         "part": part, "split": split_of(song), "notes": len(made.notes),
                         "bars": bars, "metre": metre})
        rows.append(_copy_file(folder, song, out_dir))
    with atomic_write(out_dir / "MANIFEST.csv", "w") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, required=True, help="a POP909-Dataset checkout (or its POP909/)")
    p.add_argument("--out", type=Path, default=REPO / "data" / "pop909", help="output folder (data/pop909)")
    p.add_argument("--limit", type=int, default=0, help="only the first N songs (a quick check)")
    args = p.parse_args(argv)
    rows = build(args.source, args.out, args.limit)
    count = Counter((r["split"], r["part"]) for r in rows)
    notes = Counter()
    for r in rows:
        notes[(r["split"], r["part"])] += r["notes"]
    for key in sorted(count):
        print(f"{key[0]:<11}{key[1]:<7}{count[key]:>5} files {notes[key]:>9,} notes")
    print(f"wrote {len(rows)} files and {args.out / 'MANIFEST.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
