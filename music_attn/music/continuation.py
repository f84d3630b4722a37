"""Writing a continuation onto the prompt file: the user's music comes back as it was.

The output of ``generate --prompt`` is the prompt file itself -- every track,
message, tempo change, metre, controller and its ticks per beat, copied with
mido, never re-synthesised -- plus one new track holding the continuation.

Where the new notes go:

* Decoding the generated ids gives the new notes in the tokenizer's own time:
  beats for REMI (``positions_per_beat``), seconds for performance events.
  They are the notes of ``decode(prompt + new)`` that ``decode(prompt)`` does
  not have (a multiset difference, so nothing depends on the decoder's note
  order or instrument grouping).
* They are placed relative to the prompt's last onset (beats, rounded to the
  tokenizer's grid, so the bar lines stay where the file has them) or the
  prompt's last note-off (seconds), mapped onto the prompt's tempo map after
  that point: the continuation runs at the tempo and metre in force there.
* The new track takes the continued track's channel, program and name
  (``"Melody (continued)"``); a marker meta event with the text
  :data:`MARKER_TEXT` stands where the continuation takes over.
* A tokenizer without velocity tokens gives the continuation the median
  velocity of the continued track, not a fixed default.
"""

import dataclasses
from collections import Counter
from dataclasses import dataclass

import mido
import numpy as np

from music_attn.music.constants import DRUM_CHANNEL
from music_attn.music.midi import read_midi

__all__ = ["MARKER_TEXT", "TrackInfo", "Continuation", "prompt_tracks", "choose_track", "select_notes",
           "in_beats", "new_notes", "place_notes", "continuation_file", "bar_at"]

# The text of the marker meta event written where the prompt ends.
MARKER_TEXT = "music-attn: continuation"

_NEW_DTYPE = np.dtype([("pitch", np.int16), ("velocity", np.int16), ("program", np.int16),
                       ("start", np.float64), ("end", np.float64)])   # tokenizer time: beats or seconds


@dataclass(frozen=True)
class TrackInfo:
    """A track of the prompt file that holds notes."""

    index: int        # position in the file (0-based, as mido and Score.notes["track"] count)
    name: str         # its track_name, or "track N"
    channel: int      # the channel most of its notes use
    program: int      # the program of its last note on that channel
    n_notes: int
    velocity: int     # median velocity of its notes

    @property
    def is_drums(self):
        return self.channel == DRUM_CHANNEL

    def describe(self):
        return f"{self.index} {self.name!r} ({self.n_notes} notes{', drums' if self.is_drums else ''})"


@dataclass(frozen=True)
class Continuation:
    """What :func:`continuation_file` built.

    midi : mido.MidiFile, the prompt's tracks (the same messages) plus the new track.
    track : index of the new track; n_notes : notes on it.
    start_tick : where the marker stands (the continuation takes over).
    doubled : new notes left out because they would start while a note of the same pitch
        (the prompt's or an earlier new one) sounds on the same channel.
    """

    midi: mido.MidiFile
    track: int
    n_notes: int
    start_tick: int
    doubled: int = 0


# --------------------------------------------------------------------------- tracks


def _track_name(track, index):
    names = [m.name for m in track if m.type == "track_name" and m.name.strip()]
    return names[0].strip() if names else f"track {index}"


def prompt_tracks(mid, score):
    """The tracks of ``mid`` that hold notes in ``score`` (read with drums), in file order."""
    out = []
    for index, track in enumerate(mid.tracks):
        notes = score.notes[score.notes["track"] == index]
        if len(notes):
            channels = np.bincount(notes["channel"], minlength=16)
            channel = int(np.argmax(channels))
            on_channel = notes[notes["channel"] == channel]
            out.append(TrackInfo(index, _track_name(track, index), channel, int(on_channel["program"][-1]),
                                 len(notes), int(np.median(notes["velocity"]))))
    return out


def choose_track(tracks, spec=None):
    """The track named by ``spec`` (an index, or a name; None: the pitched track with most notes).

    Raises ValueError naming the tracks there are.
    """
    listing = "; ".join(t.describe() for t in tracks) or "none"
    if spec is None:
        pitched = [t for t in tracks if not t.is_drums] or tracks
        if not pitched:
            raise ValueError("the prompt has no notes to continue")
        return max(pitched, key=lambda t: (t.n_notes, -t.index))
    spec = str(spec).strip()
    if spec.lstrip("-").isdigit():
        found = [t for t in tracks if t.index == int(spec)]
    else:
        found = [t for t in tracks if t.name == spec] or [t for t in tracks if t.name.lower() == spec.lower()]
    if len(found) != 1:
        why = "names several tracks" if found else "is not a track with notes"
        raise ValueError(f"--track {spec} {why}; the prompt's tracks with notes: {listing}")
    return found[0]


def select_notes(score, tracks=None, *, drums=True):
    """A copy of ``score`` keeping the notes of ``tracks`` (indices; None: all) and, unless
    ``drums`` is False, of channel 10."""
    keep = np.ones(len(score.notes), dtype=bool)
    if tracks is not None:
        keep &= np.isin(score.notes["track"], list(tracks))
    if not drums:
        keep &= score.notes["channel"] != DRUM_CHANNEL
    return dataclasses.replace(score, notes=score.notes[keep])


# --------------------------------------------------------------------------- decoded notes


def _decoded_table(decoded):
    """Notes of a decode result (its first field: PrettyMIDI, mido.MidiFile or Score) -> _NEW_DTYPE
    in the tokenizer's time: beats (start/end) and seconds, as two arrays."""
    midi = decoded[0]
    if hasattr(midi, "instruments"):   # PrettyMIDI: its in-memory notes, exact
        rows = [(n.pitch, n.velocity, inst.program, n.start, n.end)
                for inst in midi.instruments for n in inst.notes]
        seconds = np.array(rows, dtype=_NEW_DTYPE) if rows else np.zeros(0, _NEW_DTYPE)
        beats = seconds.copy()
        for field in ("start", "end"):
            beats[field] = [midi.time_to_tick(t) / midi.resolution for t in seconds[field]]
        return beats, seconds
    notes = read_midi(midi, include_drums=True).notes
    table = np.zeros(len(notes), dtype=_NEW_DTYPE)
    for field in ("pitch", "velocity", "program"):
        table[field] = notes[field]
    beats, seconds = table.copy(), table
    beats["start"], beats["end"] = notes["start_beat"], notes["end_beat"]
    seconds["start"], seconds["end"] = notes["start"], notes["end"]
    return beats, seconds


def _minus(full, part):
    """Rows of ``full`` not in ``part``, as multisets (times compared to 1e-9)."""
    def key(row):
        return (int(row["pitch"]), int(row["velocity"]), int(row["program"]),
                round(float(row["start"]) * 1e9), round(float(row["end"]) * 1e9))
    left = Counter(key(r) for r in part)
    keep = np.zeros(len(full), dtype=bool)
    for i, row in enumerate(full):
        k = key(row)
        if left[k]:
            left[k] -= 1
        else:
            keep[i] = True
    return full[keep]


def in_beats(tokenizer):
    """True when the tokenizer's time is beats (a grid of positions), False for seconds."""
    return getattr(tokenizer, "positions_per_beat", None) is not None


def new_notes(tokenizer, ids, prompt_length):
    """The notes the tokens after ``prompt_length`` add, and the prompt's decoded anchor.

    Returns
    -------
    notes : _NEW_DTYPE (M,), start/end in beats (REMI) or seconds (performance).
    anchor : the decoded prompt's last onset (beats) or last note-off (seconds); None
        when the prompt decodes to no notes.
    """
    use = 0 if in_beats(tokenizer) else 1
    full = _decoded_table(tokenizer.decode(ids))[use]
    prompt = _decoded_table(tokenizer.decode(ids[:prompt_length]))[use]
    anchor = None
    if len(prompt):
        anchor = float(prompt["start"].max() if use == 0 else prompt["end"].max())
    return _minus(full, prompt), anchor


def place_notes(notes, anchor, tokenizer, read):
    """Start and end ticks in the prompt file of the new ``notes``.

    ``read`` is the Score of the notes the model read (real times).  Beats:
    shifted so the decoded last onset meets the real one, the shift rounded
    to the tokenizer's grid; seconds: shifted so the decoded last note-off
    meets the real one, then through the prompt's tempo map.  No new note
    starts before the prompt's last onset.  Returns int64 (M,), (M,).
    """
    real = read.notes
    last_onset = int(real["start_tick"].max())
    if in_beats(tokenizer):
        grid = tokenizer.positions_per_beat
        shift = np.round((real["start_beat"].max() - anchor) * grid) / grid
        start, end = [np.round((notes[f] + shift) * read.ticks_per_beat) for f in ("start", "end")]
    else:
        shift = real["end"].max() - anchor
        start, end = [np.round(read.time_to_tick(notes[f] + shift)) for f in ("start", "end")]
    start = np.maximum(start.astype(np.int64), last_onset)
    return start, np.maximum(end.astype(np.int64), start + 1)


# --------------------------------------------------------------------------- the file


def _free_channel(mid):
    used = {m.channel for track in mid.tracks for m in track if hasattr(m, "channel")}
    free = [c for c in range(16) if c != DRUM_CHANNEL and c not in used]
    return free[0] if free else None


def _channel(mid, score, target, program, tick):
    """The channel for the new track: the target's, unless a program change there at ``tick``
    would change the program of a later prompt note (then a free channel, or None: no change)."""
    notes = score.notes
    later = notes[(notes["channel"] == target.channel) & (notes["start_tick"] >= tick)]
    if target.is_drums or not np.any(later["program"] != program):
        return target.channel, True
    free = _free_channel(mid)
    return (target.channel, False) if free is None else (free, True)


def _doubled(score, channel, start, end, pitch):
    """bool (M,): new notes that start while a note of their pitch sounds on ``channel`` -- a
    prompt note or an earlier new one.  One channel cannot hold both: the first note-off
    would end both notes."""
    notes = score.notes[score.notes["channel"] == channel]
    busy = {}  # pitch -> end tick of the new note sounding
    out = np.zeros(len(start), dtype=bool)
    for i in np.lexsort((pitch, start)).tolist():
        s, p = int(start[i]), int(pitch[i])
        prompt = np.any((notes["pitch"] == p) & (notes["start_tick"] <= s) & (s < notes["end_tick"]))
        out[i] = prompt or s < busy.get(p, -1)
        if not out[i]:
            busy[p] = int(end[i])
    return out


def _note_messages(start, end, pitch, velocity, channel):
    """(tick, order, message) events of the notes: at one tick, offs before ons."""
    events = []
    for s, e, p, v in zip(start.tolist(), end.tolist(), pitch.tolist(), velocity.tolist()):
        events.append((e, 0, mido.Message("note_off", note=p, velocity=0, channel=channel)))
        events.append((s, 2, mido.Message("note_on", note=p, velocity=v, channel=channel)))
    return events


def _track(events):
    """(tick, order, message) events -> MidiTrack with delta times, ending with end_of_track."""
    track, now = mido.MidiTrack(), 0
    for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    return track


def continuation_file(mid, score, read, target, start, end, notes, velocity=None):
    """The prompt file ``mid`` with a new track holding the continuation.

    Parameters
    ----------
    mid : mido.MidiFile of the prompt (type 0 or 1); its tracks are reused as they are.
    score : Score of the whole prompt (with drums), for the channel checks.
    read : Score of the notes the model read: the marker stands at the end of its last
        note, or earlier where the first new note starts.
    target : TrackInfo of the continued track (channel, program, name).
    start, end : int64 (M,), ticks of the new notes; notes : their pitches and velocities.
    velocity : int for every new note (a tokenizer without velocity tokens), or None.

    Returns
    -------
    Continuation
    """
    if mid.type == 2:
        raise ValueError("the prompt is a type 2 MIDI file (independent patterns): "
                         "a continuation cannot be appended to it")
    first = int(start.min()) if len(start) else int(read.notes["end_tick"].max())
    channel, set_program = _channel(mid, score, target, target.program, first)
    keep = ~_doubled(score, channel, start, end, notes["pitch"])
    velocities = notes["velocity"] if velocity is None else np.full(len(notes), velocity)
    start, end, pitch, velocities = start[keep], end[keep], notes["pitch"][keep], velocities[keep]
    prompt_end = int(read.notes["end_tick"].max())
    first = int(start.min()) if len(start) else prompt_end
    marker = min(first, prompt_end)
    events = [(0, 0, mido.MetaMessage("track_name", name=f"{target.name} (continued)")),
              (marker, 1, mido.MetaMessage("marker", text=MARKER_TEXT))]
    if set_program and channel != DRUM_CHANNEL:
        events.append((first, 1, mido.Message("program_change", program=target.program, channel=channel)))
    events += _note_messages(start, end, pitch, np.clip(velocities, 1, 127), channel)
    out = mido.MidiFile(type=1, ticks_per_beat=mid.ticks_per_beat, charset=mid.charset)
    out.tracks.extend(mido.MidiTrack(track) for track in mid.tracks)
    out.tracks.append(_track(events))
    return Continuation(out, len(out.tracks) - 1, len(start), marker, int(np.sum(~keep)))


def bar_at(score, tick):
    """The bar (counted from 1) holding ``tick``; each time signature starts a new bar."""
    sigs = score.time_signatures
    k = int(np.searchsorted(sigs["tick"], tick, side="right")) - 1
    bar = 1
    for i in range(k + 1):
        until = tick if i == k else int(sigs["tick"][i + 1])
        length = score.ticks_per_beat * 4 * int(sigs["numerator"][i]) / int(sigs["denominator"][i])
        bar += int(np.ceil((until - int(sigs["tick"][i])) / length)) if i < k else int((until - sigs["tick"][i]) // length)
    return bar
