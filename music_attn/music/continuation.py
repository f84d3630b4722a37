"""Writing a continuation onto the prompt file: the user's music comes back as it was.

The output of ``generate --prompt`` is the prompt file itself -- every track,
message, tempo change, metre, controller and its ticks per beat, copied with
mido, never re-synthesised -- plus a new track holding the continuation (one
per instrument when the tokens carry programs).  A type 0 prompt becomes type
1 (its one track, then the new ones); a type 2 prompt is refused.

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
  No new note starts before the prompt's last onset.
* The continuation comes after the whole prompt: when its first note would
  start before the prompt's end (the last note-off of every track, drums
  included -- not only of the notes the model read, e.g. a melody track that
  ends before the song does -- or a new note sits on the prompt's final
  chord), every new note moves later by whole bars of the metre there (by the
  gap, for tokenizers counting seconds), keeping its place in the bar.
* The new track takes the continued track's channel, program and name
  (``"Melody (continued)"``).  When the model reads several voices of one
  instrument (a chorale's four parts: tracks of one line each with the
  target's program; a string quartet's violin, viola and cello are three
  instruments and are left alone), each new
  note continues a voice on its own track: the notes starting together are
  matched, top to bottom, with the voices whose last pitches are nearest
  (``split_voices``).  New tracks are written in the order of the tracks
  they continue in the file (score order: soprano, alto, tenor, bass).
  A marker meta event with the text :data:`MARKER_TEXT` stands where the
  continuation takes over (the end of the prompt, or the first new note if
  that comes earlier).
* A new note that would start while a note of its pitch sounds on its
  channel is left out: one channel cannot hold both.
* A tokenizer without velocity tokens gives the continuation the median
  velocity of the continued track, not a fixed default.
"""

import dataclasses
import io
import struct
from collections import Counter
from dataclasses import dataclass

import mido
import numpy as np
import pretty_midi

from music_attn.music.constants import DRUM_CHANNEL
from music_attn.errors import MidiError
from music_attn.music import select
from music_attn.music.constants import MIDI_MAX_TRACKS, MIDO_MAX_TRACKS
from music_attn.music.midi import read_chunks, read_midi, source_bytes, split_chunks

__all__ = ["MARKER_TEXT", "TrackInfo", "Continuation", "load_prompt", "prompt_tracks", "choose_track",
           "check_room_for_a_track", "cut_to_passage",
           "prompt_reading", "in_beats", "new_notes", "place_notes", "continue_prompt", "route",
           "after_prompt", "split_voices", "continuation_file"]

# The text of the marker meta event written where the prompt ends.
MARKER_TEXT = "music-attn: continuation"

_NEW_DTYPE = np.dtype([("pitch", np.int16), ("velocity", np.int16), ("program", np.int16),
                       ("track", np.int16),                            # the decoded track (grid: voice)
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

    midi : mido.MidiFile, the prompt's tracks (the same messages) plus the new tracks.
    tracks : indices of the new tracks (the first holds the marker); n_notes : notes on them.
    start_tick : where the marker stands (the continuation takes over).
    doubled : new notes left out because they would start while a note of the same pitch
        (the prompt's or an earlier new one) sounds on the same channel.
    """

    midi: mido.MidiFile
    tracks: tuple
    n_notes: int
    start_tick: int
    doubled: int = 0


# --------------------------------------------------------------------------- the prompt


def load_prompt(path, *, sustain=False):
    """The prompt file as mido tracks and as a Score with drums: ``(mido.MidiFile, Score)``.

    The file is read once: its bytes are split into chunks, the Score is read
    from them (first: it refuses bad files in linear time) and the mido tracks
    are built from the same chunks (other chunks skipped, each track up to its
    end_of_track); texts are latin-1, so every byte is written back as it was.
    MidiError names the file.
    """
    data, name = source_bytes(path)
    fmt, tpb, chunks = split_chunks(data, name)
    score = read_chunks(fmt, tpb, chunks, name, include_drums=True, sustain=sustain)
    mid = _mido_tracks(fmt, tpb, chunks, name)
    for i, track in enumerate(mid.tracks):
        ends = [k for k, msg in enumerate(track) if msg.type == "end_of_track"]
        mid.tracks[i] = mido.MidiTrack(track[: ends[0] + 1] if ends else track)
    return mid, score


def _mido_tracks(fmt, tpb, chunks, name):
    """A mido.MidiFile of the MTrk chunks, read in groups that mido's signed 16-bit track count
    can hold (a file may have up to 65,535 tracks)."""
    mid = None
    for lo in range(0, max(len(chunks), 1), MIDO_MAX_TRACKS):
        group = chunks[lo:lo + MIDO_MAX_TRACKS]
        header = struct.pack(">4sLHHh", b"MThd", 6, fmt, len(group), tpb)
        body = b"".join(b"MTrk" + struct.pack(">L", len(c)) + c for c in group)
        try:
            part = mido.MidiFile(file=io.BytesIO(header + body), clip=True, charset="latin1")
        except Exception as exc:  # mido raises OSError, EOFError, ValueError, KeyError...
            raise MidiError(f"{name}: corrupt MIDI data ({exc or type(exc).__name__})") from None
        if mid is None:
            mid = part
        else:
            mid.tracks.extend(part.tracks)
    return mid


def cut_to_passage(mid, score, start_tick, end_tick):
    """The prompt file and Score with only the notes starting in ``start_tick <= tick < end_tick``.

    What ``prompt_bars`` asks for: the output is those bars, then the
    continuation.  Every other message (tempo, metre, programs, texts) stays
    where it was; a note's on and off go together (matched first in, first out
    per channel and pitch).  Returns ``(mido.MidiFile, Score)``.
    """
    out = mido.MidiFile(type=mid.type, ticks_per_beat=mid.ticks_per_beat, charset="latin1")
    for track in mid.tracks:
        out.tracks.append(_track_in_passage(track, start_tick, end_tick))
    keep = (score.notes["start_tick"] >= start_tick) & (score.notes["start_tick"] < end_tick)
    return out, dataclasses.replace(score, notes=score.notes[keep])


def _track_in_passage(track, start_tick, end_tick):
    """One mido track without the notes that start outside the passage (delta times kept right)."""
    events, sounding, tick = [], {}, 0
    for msg in track:
        tick += msg.time
        if msg.type in ("note_on", "note_off"):
            key = (msg.channel, msg.note)
            if msg.type == "note_on" and msg.velocity > 0:
                inside = start_tick <= tick < end_tick
                sounding.setdefault(key, []).append(inside)
                if not inside:
                    continue
            elif sounding.get(key) and not sounding[key].pop(0):
                continue                                       # the off of a note left out
        events.append((tick, msg))
    cut, now = mido.MidiTrack(), 0
    for at, msg in events:
        cut.append(msg.copy(time=at - now))
        now = at
    return cut


# --------------------------------------------------------------------------- tracks


def check_room_for_a_track(mid, name):
    """MidiError when the prompt already has MIDI's most tracks: the continuation needs one more."""
    if len(mid.tracks) >= MIDI_MAX_TRACKS:
        raise MidiError(f"{name}: has {len(mid.tracks):,} tracks, the most a MIDI file can hold; "
                        "there is no room for the continuation's track")


def prompt_tracks(mid, score):
    """The tracks of ``mid`` that hold notes in ``score`` (read with drums), in file order."""
    names, out = select.track_names(score), []
    for index in range(len(mid.tracks)):
        notes = score.notes[score.notes["track"] == index]
        if len(notes):
            channel = int(np.argmax(np.bincount(notes["channel"], minlength=16)))
            program = int(notes["program"][notes["channel"] == channel][-1])
            out.append(TrackInfo(index, names.get(index, f"track {index}"), channel, program,
                                 len(notes), int(np.median(notes["velocity"]))))
    return out


def choose_track(tracks, score, names, spec=None):
    """The TrackInfo of the track ``spec`` names (an index or a name, by the rule of
    :func:`select.keep_tracks`); None: the pitched track with most notes."""
    if spec is None:
        pitched = [t for t in tracks if not t.is_drums] or tracks
        if not pitched:
            raise ValueError("the prompt has no notes to continue")
        return max(pitched, key=lambda t: (t.n_notes, -t.index))
    index = int(select.keep_tracks(score, [spec], names).notes["track"][0])
    return next(t for t in tracks if t.index == index)


def prompt_reading(score, target, *, melody=False, drums=False):
    """What the model reads of the prompt: every track, or (``melody``) the top voice of the
    target track; drum notes only with ``drums``.  Returns (Score, drum notes left out)."""
    if melody:
        score = select.keep_tracks(score, [target.index])
    keep = drums | (score.notes["channel"] != DRUM_CHANNEL)
    read = dataclasses.replace(score, notes=score.notes[keep])
    return (select.top_voice(read) if melody else read), int(np.sum(~keep))


# --------------------------------------------------------------------------- decoded notes


def _decoded_table(decoded):
    """Notes of a decode result (its first field: a Score) -> _NEW_DTYPE
    in the tokenizer's time: beats (start/end) and seconds, as two arrays."""
    midi = decoded[0]
    notes = read_midi(midi, include_drums=True).notes
    table = np.zeros(len(notes), dtype=_NEW_DTYPE)
    for field in ("pitch", "velocity", "program", "track"):
        table[field] = notes[field]
    table["program"][notes["channel"] == DRUM_CHANNEL] = -1
    beats, seconds = table.copy(), table
    beats["start"], beats["end"] = notes["start_beat"], notes["end_beat"]
    seconds["start"], seconds["end"] = notes["start"], notes["end"]
    return beats, seconds


def _minus(full, part):
    """Rows of ``full`` not in ``part``, as multisets (times compared to 1e-9)."""
    def key(row):
        return (int(row["pitch"]), int(row["velocity"]), int(row["program"]), int(row["track"]),
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
    low, high = tokenizer.pitch_range
    real = read.notes[(read.notes["pitch"] >= low) & (read.notes["pitch"] <= high)]   # the notes tokenized
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


def _channel(score, target, program, tick):
    """(channel, whether to set the program) for a new track: the target's channel,
    unless a program change there at ``tick`` would change the program of a later
    prompt note; then a channel no note of the prompt uses, or no program change."""
    notes = score.notes
    later = notes[(notes["channel"] == target.channel) & (notes["start_tick"] >= tick)]
    if target.is_drums or not np.any(later["program"] != program):
        return target.channel, True
    free = sorted(set(range(16)) - {DRUM_CHANNEL} - set(notes["channel"].tolist()))
    return (free[0], True) if free else (target.channel, False)


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


def continue_prompt(mid, score, read, tracks, target, tokenizer, ids, prompt_length, *, prompt_end=None):
    """The prompt file with the notes that the ids after ``prompt_length`` add.

    ``mid``/``score``: the prompt file (mido, and read with drums); ``read``: the
    Score of the notes the model read; ``tracks``/``target``: from
    :func:`prompt_tracks` and :func:`choose_track`; ``prompt_end``: the tick the
    continuation comes after (default: the last note-off of ``score``, every
    track).  Returns a Continuation.
    """
    notes, anchor = new_notes(tokenizer, ids, prompt_length)
    if anchor is None:
        low, high = tokenizer.pitch_range
        raise ValueError(f"the model reads none of the prompt's notes (its pitches lie outside {low}..{high})")
    prompt_end = int(score.notes["end_tick"].max()) if prompt_end is None else int(prompt_end)
    start, end = after_prompt(*place_notes(notes, anchor, tokenizer, read), prompt_end, score, tokenizer)
    voices = tokenizer.voice_tracks(read) if hasattr(tokenizer, "voice_tracks") else {}
    if voices:                                   # four voices: each continues its own track
        targets, which = route_voices(tracks, target, notes["track"], voices)
    else:
        own = -1 if target.is_drums else target.program
        programs = notes["program"] if getattr(tokenizer, "programs", False) else np.full(len(notes), own)
        targets, which = route(mid, tracks, target, programs)
        targets, which = split_voices(read, tracks, target, targets, which, start, notes["pitch"])
    velocity = notes["velocity"] if tokenizer.velocity_bins else np.array([t.velocity for t in targets])[which]
    return continuation_file(mid, score, read, targets, which, start, end, notes["pitch"], velocity,
                             prompt_end=prompt_end)


def after_prompt(start, end, prompt_end, score, tokenizer):
    """The new notes (ticks, (M,)) moved after ``prompt_end`` when the first starts before it.

    Beats: by the fewest whole bars (of the metre in force at ``prompt_end``) that
    bring the first onset to ``prompt_end`` or later, so every note keeps its place
    in the bar; seconds: by the gap.  A first onset up to a 32nd note before the
    end counts as after it (a release a little late is not a final chord).
    """
    if not len(start):
        return start, end
    first = int(start.min())
    slack = score.ticks_per_beat // 8
    if first >= prompt_end - slack:
        return start, end
    if in_beats(tokenizer):
        sig = score.time_signatures[score.time_signatures["tick"] <= prompt_end][-1]
        bar = score.ticks_per_beat * 4 * int(sig["numerator"]) // int(sig["denominator"])
        shift = -(-(prompt_end - slack - first) // bar) * bar
    else:
        shift = prompt_end - first
    return start + shift, end + shift


def _voice_tracks(read, target):
    """The tracks of ``read`` that are voices of the target's instrument: one line each (at most
    a tenth of their notes start while another of theirs sounds), pitched, of the target's
    program.  Sorted from the highest mean pitch down."""
    notes, out = read.notes, []
    slack = read.ticks_per_beat // 8
    for t in np.unique(notes["track"]).tolist():
        mine = notes[notes["track"] == t]
        mine = mine[np.argsort(mine["start_tick"], kind="stable")]
        if np.any(mine["channel"] == DRUM_CHANNEL) or np.any(mine["program"] != target.program):
            continue
        overlap = mine["start_tick"][1:] < np.maximum.accumulate(mine["end_tick"])[:-1] - slack
        if overlap.sum() <= 0.1 * len(mine):
            out.append((-float(mine["pitch"].mean()), t, int(mine["pitch"][-1])))
    return sorted(out)


def split_voices(read, tracks, target, targets, which, start, pitch):
    """Spread the new notes routed to ``target`` (one of ``targets``) over the voices the model read.

    The voices: :func:`_voice_tracks` (two or more, the target among them).  The
    notes starting together, from the top, go to as many voices, kept in order,
    whose last pitches are nearest (the least total distance; with more notes than
    voices, the extra ones join the nearest voice); each voice's last pitch then
    moves on.  Returns (targets, which), as :func:`route`: the voices in score order (the
    highest first), then the other tracks in file order.
    """
    voices = _voice_tracks(read, target)
    by_index = {t.index: t for t in tracks}
    if len(voices) < 2 or target.index not in [v[1] for v in voices]:
        return targets, which
    targets, which = list(targets), which.copy()
    slot = []
    for _, index, _ in voices:
        if by_index[index] not in targets:
            targets.append(by_index[index])
        slot.append(targets.index(by_index[index]))
    last = np.array([v[2] for v in voices], dtype=np.float64)
    mine = np.flatnonzero(which == targets.index(target))
    for onset in np.unique(start[mine]).tolist():
        group = mine[start[mine] == onset]
        group = group[np.argsort(-pitch[group], kind="stable")]
        chosen = _nearest_voices(pitch[group].astype(np.float64), last)
        for note, v in zip(group.tolist(), chosen):
            which[note] = slot[v]
            last[v] = pitch[note]
    others = sorted((k for k in range(len(targets)) if k not in slot), key=lambda k: _file_order(targets[k]))
    return _reorder(targets, which, slot + others)


def _nearest_voices(pitches, last):
    """Voice of each of ``pitches`` (high to low): an order-keeping choice of voices nearest to ``last``."""
    import itertools

    V, g = len(last), len(pitches)
    if g > V:                                              # a bigger chord than the voices
        head = _nearest_voices(pitches[:V], last)
        return head + [int(np.argmin(np.abs(last - p))) for p in pitches[V:]]
    best = min(itertools.combinations(range(V), g), key=lambda c: np.abs(last[list(c)] - pitches).sum())
    return list(best)


def _file_order(target):
    """Sort key of a target: its track in the file; new tracks (index -1) last."""
    return (target.index < 0, target.index)


def _reorder(targets, which, order):
    """``targets`` in ``order`` (a permutation of their positions), ``which`` renumbered to match."""
    place = np.empty(len(targets), dtype=np.int64)
    place[order] = np.arange(len(targets))
    return [targets[k] for k in order], place[which]


def route(mid, tracks, target, programs):
    """The track each new note goes to, by the program its tokens gave it (-1: drums).

    A note of the target's program goes to the target; another program to the
    prompt's track with most notes of that program (drums: the drum track);
    a program the prompt does not have to a new track (index -1) named after
    its General MIDI instrument, on a channel no message of the file uses, or
    to the target when no channel is left.

    Returns (targets: list of TrackInfo in the order of the file's tracks, new ones last;
    which: int (M,) into it).
    """
    targets, which = [target], np.zeros(len(programs), dtype=np.int64)
    used = {m.channel for t in mid.tracks for m in t if hasattr(m, "channel")}
    free = [c for c in range(16) if c != DRUM_CHANNEL and c not in used]
    for program in sorted(set(programs.tolist()) - {-1 if target.is_drums else target.program}):
        dest = _track_for(program, tracks, target, free)
        if dest is not target:
            targets.append(dest)
            which[programs == program] = len(targets) - 1
    return _reorder(targets, which, sorted(range(len(targets)), key=lambda k: _file_order(targets[k])))


def route_voices(tracks, target, voice, voice_tracks):
    """The track each new note goes to by its voice (a four-voice grid): the prompt track
    read as that voice (``voice_tracks``: {voice: file track}).

    Returns (targets: list of TrackInfo in score order, soprano first; which: int (M,) into it).
    """
    by_index = {t.index: t for t in tracks}
    targets, which, rank = [target], np.zeros(len(voice), dtype=np.int64), {0: 4}
    for v in sorted(set(voice.tolist())):
        dest = by_index.get(voice_tracks.get(v), target)
        if dest not in targets:
            targets.append(dest)
        which[voice == v] = targets.index(dest)
        rank[targets.index(dest)] = min(rank.get(targets.index(dest), 4), v)
    return _reorder(targets, which, sorted(range(len(targets)), key=lambda k: (rank[k], k)))


def _track_for(program, tracks, target, free):
    """The prompt's track of ``program`` (-1: drums), or a new one (taking a channel of ``free``)."""
    same = [t for t in tracks if (t.is_drums if program < 0 else t.program == program and not t.is_drums)]
    if same:
        return max(same, key=lambda t: (t.n_notes, -t.index))
    if program < 0:
        return TrackInfo(-1, "Drums", DRUM_CHANNEL, 0, 0, target.velocity)
    if not free:
        return target
    return TrackInfo(-1, pretty_midi.program_to_instrument_name(program), free.pop(0), program, 0, target.velocity)


def continuation_file(mid, score, read, targets, which, start, end, pitch, velocity, *, prompt_end=None):
    """The prompt file ``mid`` with new tracks holding the continuation.

    Parameters
    ----------
    mid : mido.MidiFile of the prompt (type 0 or 1); its tracks are reused as they are.
    score : Score of the whole prompt (with drums), for the channel checks.
    read : Score of the notes the model read: the marker stands at the end of its last
        note, or earlier where the first new note starts.
    targets : list of TrackInfo, the tracks continued (channel, program, name); the
        first one gets the marker and a track even without notes.
    which : int (M,), the target of each new note (see :func:`route`).
    start, end, pitch, velocity : int (M,), the new notes (ticks of the prompt file).
    prompt_end : the tick the continuation follows (default: the end of ``read``'s last note).

    Returns
    -------
    Continuation
    """
    if mid.type == 2:
        raise ValueError("the prompt is a type 2 MIDI file (independent patterns): "
                         "a continuation cannot be appended to it")
    prompt_end = int(read.notes["end_tick"].max()) if prompt_end is None else int(prompt_end)
    parts = [_part(score, t, start[which == k], end[which == k], pitch[which == k], velocity[which == k],
                   prompt_end) for k, t in enumerate(targets)]
    starts = [e[0] for part, _ in parts for e in part if e[2].type == "note_on"]
    marker = min(min(starts, default=prompt_end), prompt_end)
    out = mido.MidiFile(type=1, ticks_per_beat=mid.ticks_per_beat, charset=mid.charset)
    out.tracks.extend(mido.MidiTrack(track) for track in mid.tracks)
    made = []
    for k, (events, _) in enumerate(parts):
        if k == 0 or len(events) > 1:
            marks = [(marker, 1, mido.MetaMessage("marker", text=MARKER_TEXT))] if k == 0 else []
            out.tracks.append(_track(events + marks))
            made.append(len(out.tracks) - 1)
    n_notes = sum(e[2].type == "note_on" for part, _ in parts for e in part)
    return Continuation(out, tuple(made), n_notes, marker, sum(d for _, d in parts))


def _part(score, target, start, end, pitch, velocity, prompt_end):
    """(events, notes left out) of one new track: its name, program change and notes."""
    first = int(start.min()) if len(start) else prompt_end
    channel, set_program = _channel(score, target, target.program, first)
    keep = ~_doubled(score, channel, start, end, pitch)
    events = [(0, 0, mido.MetaMessage("track_name", name=f"{target.name} (continued)"))]
    if set_program and channel != DRUM_CHANNEL and keep.any():
        events.append((int(start[keep].min()), 1,
                       mido.Message("program_change", program=target.program, channel=channel)))
    events += _note_messages(start[keep], end[keep], pitch[keep], np.clip(velocity[keep], 1, 127), channel)
    return events, int(np.sum(~keep))
