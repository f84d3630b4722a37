"""Build the shipped MIDI corpus under ``data/`` from music21's bundled corpus.

Run from the repository root (music21 is needed here only, never by the library)::

    python scripts/build_corpus.py            # all four collections, 2 workers
    python scripts/build_corpus.py --jobs 1 --limit 20   # a quick partial build

Collections (all public domain, see ``data/README.md``): O'Neill's Music of
Ireland (``oneills1850``), Ryan's Mammoth Collection (``ryansMammoth``), Aird's
Airs (``airdsAirs``) and the Bach chorales (``bach``, the four voices only).
The Essen folksong collection is deliberately left out: its permission covers
non-commercial use only.

Every tune of an ABC file becomes one MIDI file ``data/<collection>/<slug>.mid``
(type 1, 480 ticks per beat, a conductor track with tempo, time signatures
and key signatures, then one track per voice).  A pickup bar is padded with
silence so that bar lines in the MIDI fall on the notated bar lines.  Grace
notes, ornaments and chord symbols take no time (``clean_abc`` rewrites the
decorations music21 would misread); ties are merged; repeats are played as
written (not expanded).  Every bar adds up to its metre: a short bar is padded
with a rest (``Timeline``), a tune with a bar too long is left out.  Onsets
and ends lie on the grid of sixteenths and triplets (``on_grid``).  Tunes
music21 cannot read are skipped; every repair and skip is counted and listed.  The output is deterministic: rebuilding gives byte-identical files,
the same ``data/MANIFEST.csv`` and the same train/validation split (by tune
title, see ``music_attn.training.data.split_for_title``).  Finally a few short
validation melodies are copied into ``music_attn/assets/melodies/``.
"""

import argparse
import bisect
import csv
import io
import multiprocessing
import re
import shutil
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import mido

from music_attn._io import atomic_write
from music_attn.training.data import split_for_title

REPO = Path(__file__).resolve().parent.parent
TPQ = 480  # ticks per quarter note: holds sixteenths, triplets and quintuplets exactly
GRID_STEP = TPQ // 12  # onsets and ends go on the grid of sixteenths and triplets (REMI's grid)
VELOCITY = 80  # the sources carry no dynamics worth keeping; one mezzo-forte velocity
DEFAULT_QPM = 120.0  # tempo written when a tune states none (the MIDI default)
ABC_PROGRAM = 40  # violin: these are fiddle, pipe and flute tunes
BACH_PROGRAM = 52  # choir aahs: the chorales are sung
ABC_COLLECTIONS = ("oneills1850", "ryansMammoth", "airdsAirs")
COLLECTIONS = ABC_COLLECTIONS + ("bach",)
VOICES = ("soprano", "alto", "tenor", "bass")
MANIFEST_FIELDS = ("file", "collection", "title", "metre", "key", "notes", "bars", "repaired",
                   "on_grid", "tempo", "source", "split")
MELODY_FIELDS = ("file", "title", "collection", "metre", "key", "source", "corpus_file")
COLLECTION_NAMES = {
    "oneills1850": "O'Neill's Music of Ireland (Chicago, 1903)",
    "ryansMammoth": "Ryan's Mammoth Collection (Boston, 1883)",
    "airdsAirs": "Aird's Selection of Scotch, English, Irish and Foreign Airs (Glasgow, 1782-1803)",
    "bach": "J. S. Bach, four-part chorales",
}

# Chosen by hand from the validation split: single line, 8-32 bars, a mix of metres.
MELODIES = (
    "oneills1850/1425-drowsy-maggie.mid",  # reel, 2/2
    "ryansMammoth/garry-owen-jig.mid",  # jig, 6/8
    "oneills1850/0069-o-carolan-s-lament.mid",  # slow air, 3/4
    "airdsAirs/book1-123-fy-let-us-a-to-the-bridal.mid",  # slip jig, 9/8
    "airdsAirs/book1-018-for-a-that-and-a-that.mid",  # song air, 2/4
    "oneills1850/0203-the-minstrel-boy.mid",  # song air, 4/4
    "ryansMammoth/neal-gow-s-wife-strathspey.mid",  # strathspey (Scotch snaps), 4/4
    "oneills1850/0604-the-fisherman-s-song.mid",  # song air, 3/8
)


# ----------------------------------------------------------------------------- tasks


def corpus_root():
    """Return music21's corpus folder (the parent of every collection)."""
    from music21 import common

    return Path(common.getCorpusFilePath())


def read_text(path):
    """Read an ABC file as text: UTF-8 when it decodes, else Latin-1."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def split_abc(text):
    """Split an ABC file into its tunes: a list of ``(number, text)`` from each ``X:`` line."""
    tunes = []
    for chunk in re.split(r"(?m)^(?=X:)", text):
        match = re.match(r"X:\s*(\d+)", chunk)
        if match:
            tunes.append((int(match.group(1)), chunk))
    return tunes


# Outside quoted text, !decorations! and [X:...] inline fields, in the tune body:
_ABC_SKIP = r'"[^"\n]*"|![^!\n]*!|\[[A-Za-z]:[^\]\n]*\]'
# what music21 10 misreads, and what it should read instead
_ABC_FIXES = {
    "H": "!fermata!",   # music21 drops the note after the fermata letter: its bar comes out short
    "J": "",            # the slide letter becomes a note C with time of its own
    "x": "z",           # invisible rests are dropped: their time is lost and later bars slip
}


def clean_abc(text):
    """The ABC of one tune with the decorations music21 would give time (or take time from) rewritten.

    Header lines (``T:``, ``M:``, ...) and comments are left alone; in the
    music, the one-letter decorations ``H`` (fermata) and ``J`` (slide) and
    the invisible rest ``x`` become what music21 reads correctly.
    """
    out, body = [], False
    for line in text.splitlines(keepends=True):
        if re.match(r"[A-Za-z]:", line) or line.lstrip().startswith("%"):
            body = body or line.startswith("K:")
            out.append(line)
            continue
        if not body:
            out.append(line)
            continue
        music, percent, comment = line.partition("%")
        parts = re.split(f"({_ABC_SKIP})", music)
        parts[::2] = [re.sub("[HJx]", lambda m: _ABC_FIXES[m.group(0)], p) for p in parts[::2]]
        out.append("".join(parts) + percent + comment)
    return "".join(out)


def abc_tasks(collection, root):
    """One task per tune of every ABC file of ``collection`` (files in sorted order).

    O'Neill's ships a few overlapping files (two transcriptions of the same
    range); a tune number seen before is skipped so each tune appears once.
    """
    from music21 import corpus

    found = corpus.getWork(collection)
    files = sorted(Path(p) for p in (found if isinstance(found, list) else [found]))
    tasks, seen = [], set()
    for path in files:
        for number, text in split_abc(read_text(path)):
            ident = (path.stem if collection != "oneills1850" else "", number)
            if ident in seen:
                continue
            seen.add(ident)
            rel = path.relative_to(root).as_posix()
            tasks.append({"collection": collection, "source": f"{rel}#X:{number}",
                          "stem": path.stem, "number": number, "abc": text})
    return tasks


def bach_tasks(root):
    """One task per Bach chorale file in MusicXML (``.mxl`` preferred to ``.xml``).

    The three Humdrum (``.krn``) files are left out: their headers reserve
    the rights to derivative electronic formats (and each has a MusicXML twin).
    """
    from music21 import corpus

    order = {".xml": 1, ".mxl": 2}  # later formats win for the same BWV number
    by_stem = {}
    paths = [Path(p) for p in corpus.getWork("bach")]
    for path in sorted(paths, key=lambda p: (order.get(p.suffix, -1), p)):
        if path.suffix in order and path.stem.startswith("bwv"):
            by_stem[path.stem] = path
    return [{"collection": "bach", "source": by_stem[s].relative_to(root).as_posix(),
             "stem": s, "path": str(by_stem[s])} for s in sorted(by_stem)]


# ----------------------------------------------------------------------------- music21 -> MIDI


def quarter_ticks(quarter_length):
    """Quarter lengths (float or Fraction) -> integer ticks at TPQ."""
    return int(round(Fraction(quarter_length).limit_denominator(10**6) * TPQ))


def on_grid(tick):
    """``tick`` moved to the nearest grid position (GRID_STEP; halves to the even step).

    Bar lines fall on the grid, so this is the nearest sixteenth or triplet
    position in the bar: a dotted-sixteenth and thirty-second pair (0 and 4.5
    steps) becomes the swung 2:1 pair (0 and 4), as fiddlers play it.
    """
    return int(round(tick / GRID_STEP)) * GRID_STEP


class BarsDoNotAddUp(ValueError):
    """A tune with a bar longer than its metre: the transcription lost a bar line or gave an ornament time."""


@dataclass
class Timeline:
    """Score offsets (quarter lengths) -> MIDI ticks, with the bar lines where the metre puts them.

    ``starts`` holds each measure's offset in the score and ``ticks`` the tick
    its bar line gets: the pickup is padded with the silence that completes
    it, and a bar shorter than its metre (not a pickup, not the end of a
    strain completed by the next strain's pickup, not the last bar) is
    padded with silence at its end, so a slip in one bar never shifts the
    rest of the tune.  ``repaired`` counts those padded bars.
    """

    starts: list
    ticks: list
    repaired: int = 0

    def tick(self, offset):
        """Tick of a note or event at ``offset`` (in the measure that holds it)."""
        k = max(bisect.bisect_right(self.starts, offset) - 1, 0)
        return quarter_ticks(offset - self.starts[k]) + self.ticks[k]

    def end_tick(self, offset):
        """Tick of a note ending at ``offset`` (in the measure where it sounds last)."""
        k = max(bisect.bisect_left(self.starts, offset) - 1, 0)
        return quarter_ticks(offset - self.starts[k]) + self.ticks[k]


def bar_lengths(part, declared=None):
    """``(measure offset, its length, the metre's bar length)`` of each measure, in quarter lengths.

    For ABC only declared metres count (music21 gives an incomplete bar a
    signature of its own length, e.g. 1/16, which is not a metre).
    """
    out, metre = [], None
    for m in part.getElementsByClass("Measure"):
        ts = m.timeSignature
        if ts is not None and (declared is None or ts.ratioString in declared or metre is None):
            metre = Fraction(ts.barDuration.quarterLength).limit_denominator(10**6)
        length = Fraction(m.duration.quarterLength).limit_denominator(10**6)
        out.append((Fraction(m.offset).limit_denominator(10**6), length, metre or length))
    return out


def timeline(part, declared=None):
    """The :class:`Timeline` of a part; BarsDoNotAddUp for a bar longer than its metre."""
    bars = bar_lengths(part, declared)
    if not bars:
        return Timeline([0.0], [0])
    first = bars[0]
    now = first[2] - first[1] if first[1] < first[2] else Fraction(0)    # the pickup's silence
    starts, ticks, repaired, k = [], [], 0, 0
    while k < len(bars):
        offset, length, full = bars[k]
        if length > full:
            raise BarsDoNotAddUp(f"bar {k + 1} lasts {length} quarters in a metre of {full}")
        starts.append(float(offset))
        ticks.append(quarter_ticks(now))
        short = k > 0 and 0 < length < full and k + 1 < len(bars)
        pair = short and length + bars[k + 1][1] == full                  # strain end + next pickup
        if pair:
            starts.append(float(bars[k + 1][0]))
            ticks.append(quarter_ticks(now + length))
            k += 1
        elif short:
            repaired += 1
        now += full if short or pair else length
        k += 1
    return Timeline(starts, ticks, repaired)


class FinerThanGrid(ValueError):
    """Two onsets of a tune are closer than the grid: written on it they would sound as one chord."""


def part_notes(part, line):
    """The notes of one part as ``(start_tick, end_tick, pitch)`` on the grid, ties merged, graces dropped.

    Returns the notes and whether any onset or end had to move onto the grid.
    """
    from music21 import harmony

    flat = part.stripTies(matchByPitch=True).flatten()
    notes, exact = [], set()
    for n in flat.notes:
        if isinstance(n, harmony.Harmony) or n.duration.isGrace or n.quarterLength <= 0:
            continue
        start = line.tick(float(n.offset))
        end = line.end_tick(float(n.offset + n.quarterLength))
        exact.update((start, end))
        start, end = on_grid(start), max(on_grid(end), on_grid(start) + GRID_STEP)
        notes.extend((start, end, p.midi) for p in n.pitches if 0 <= p.midi <= 127)
    moved = any(t % GRID_STEP for t in exact)
    onsets = {n.offset for n in flat.notes if not n.duration.isGrace and n.quarterLength > 0}
    if moved and len({on_grid(line.tick(float(o))) for o in onsets}) < len(onsets):
        raise FinerThanGrid("two onsets closer than a sixteenth-note triplet")
    return sorted(set(notes)), moved


def shifted(offset, line):
    """Tick of a score event at ``offset``; events at the very start stay at tick 0."""
    return 0 if offset <= 0 else line.tick(float(offset))


def measure_marks(part, attribute):
    """``(offset, object)`` for each measure of ``part`` whose ``attribute`` is set.

    Read measure by measure: music21 may reuse one TimeSignature object in
    several bars, and a flattened stream keeps only its last position.
    """
    marks = []
    for m in part.getElementsByClass("Measure"):
        obj = getattr(m, attribute)
        if obj is not None:
            marks.append((float(m.offset) + float(obj.offset), obj))
    return marks


def declared_metres(abc):
    """The metres an ABC tune declares in ``M:`` fields (``C`` is 4/4, ``C|`` is 2/2)."""
    fields = re.findall(r"(?m)^M:\s*([^\s%]+)", abc) + re.findall(r"\[M:\s*([^\]\s]+)\]", abc)
    return {{"C": "4/4", "C|": "2/2"}.get(f, f) for f in fields}


def time_signatures(score, line, declared=None):
    """Distinct time-signature changes as ``(tick, numerator, denominator)``.

    For ABC, only the metres the tune declares are kept: music21 marks an
    incomplete bar (the end of a strain before the next strain's pickup)
    with a bar-sized signature such as ``1/16``, which is not a change of
    metre.  The first signature is placed at tick 0.
    """
    out = []
    for offset, ts in measure_marks(score.parts[0], "timeSignature"):
        if declared is not None and ts.ratioString not in declared:
            continue
        if ts.denominator & (ts.denominator - 1):
            raise ValueError(f"metre {ts.ratioString} has no MIDI time signature")
        if not out or out[-1][1:] != (ts.numerator, ts.denominator):
            out.append((shifted(offset, line) if out else 0, ts.numerator, ts.denominator))
    if not out:
        raise ValueError("no time signature")
    return out


def tempos(score, line):
    """Tempo changes as ``(tick, quarter notes per minute)``; the first one at tick 0."""
    marks = {}
    for mark in score.flatten().getElementsByClass("MetronomeMark"):
        qpm = mark.getQuarterBPM()
        if qpm and qpm > 0:
            marks.setdefault(shifted(mark.offset, line), float(qpm))
    events = sorted(marks.items())
    if not events:
        return [(0, DEFAULT_QPM)]
    out = [(0, events[0][1])]
    out += [(tick, qpm) for (tick, qpm), (_, prev) in zip(events[1:], events) if qpm != prev]
    return out


MAJOR_BY_SHARPS = dict(zip(range(-7, 8), "Cb Gb Db Ab Eb Bb F C G D A E B F# C#".split()))
MINOR_BY_SHARPS = dict(zip(range(-7, 8), "Ab Eb Bb F C G D A E B F# C# G# D# A#".split()))


def key_signatures(score, line):
    """Key-signature changes as ``(tick, mido key name)``; church modes keep their signature."""
    out = []
    for offset, ks in measure_marks(score.parts[0], "keySignature"):
        minor = getattr(ks, "mode", "major") == "minor"
        sharps = max(-7, min(7, ks.sharps))
        name = MINOR_BY_SHARPS[sharps] + "m" if minor else MAJOR_BY_SHARPS[sharps]
        if not out or out[-1][1] != name:
            out.append((shifted(offset, line) if out else 0, name))
    return out


def key_label(score):
    """A readable key for the manifest: ``G major``, ``E minor``, ``D dorian``."""
    keys = [k for _, k in measure_marks(score.parts[0], "keySignature") if hasattr(k, "tonic")]
    k = keys[0] if keys else score.analyze("key")
    return f"{k.tonic.name.replace('-', 'b')} {k.mode}"


def midi_text(text):
    """ASCII form of a title for MIDI meta events (accents and curly quotes flattened)."""
    text = text.translate(str.maketrans("\u2018\u2019\u201c\u201d", "''\"\""))
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def to_delta(events):
    """Absolute-tick ``(tick, order, message)`` events -> a mido track with delta times."""
    track, now = mido.MidiTrack(), 0
    for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(msg.copy(time=tick - now))
        now = tick
    return track


def conductor_track(title, score, line, end, declared):
    """Track 0: title, tempo map, time signatures and key signatures."""
    events = [(0, 0, mido.MetaMessage("track_name", name=midi_text(title)[:120]))]
    events += [(t, 1, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(q)))
               for t, q in tempos(score, line)]
    events += [(t, 2, mido.MetaMessage("time_signature", numerator=n, denominator=d))
               for t, n, d in time_signatures(score, line, declared)]
    events += [(t, 3, mido.MetaMessage("key_signature", key=k))
               for t, k in key_signatures(score, line)]
    events.append((end, 9, mido.MetaMessage("end_of_track")))
    return to_delta(events)


def voice_track(name, notes, channel, program, end):
    """One voice: name, program change, then note-on/offs (offs first at equal ticks)."""
    events = [(0, 0, mido.MetaMessage("track_name", name=midi_text(name))),
              (0, 1, mido.Message("program_change", channel=channel, program=program))]
    for start, stop, pitch in notes:
        events.append((start, 3, mido.Message("note_on", channel=channel, note=pitch,
                                              velocity=VELOCITY)))
        events.append((stop, 2, mido.Message("note_off", channel=channel, note=pitch)))
    events.append((end, 9, mido.MetaMessage("end_of_track")))
    return to_delta(events)


def score_to_midi(score, parts, title, program, declared=None):
    """Write ``parts`` of a music21 score as a type-1 MIDI.

    Returns ``(bytes, note count, bars padded, whether notes moved onto the grid)``.
    """
    line = timeline(parts[0], declared)
    names = [p.partName or ("Melody" if len(parts) == 1 else f"Voice {i + 1}")
             for i, p in enumerate(parts)]
    voices, moved = [], False
    for name, part in zip(names, parts):
        notes, moved_here = part_notes(part, line)
        voices.append((name, notes))
        moved |= moved_here
    end = max((n[1] for _, notes in voices for n in notes), default=0)
    mid = mido.MidiFile(type=1, ticks_per_beat=TPQ)
    mid.tracks.append(conductor_track(title, score, line, end, declared))
    for channel, (name, notes) in enumerate(voices):
        mid.tracks.append(voice_track(name, notes, channel, program, end))
    buffer = io.BytesIO()
    mid.save(file=buffer)
    return buffer.getvalue(), sum(len(notes) for _, notes in voices), line.repaired, moved


# ----------------------------------------------------------------------------- workers


def capital_word(word):
    """``"O'NEILL'S"`` -> ``"O'Neill's"``, ``"GOWN"`` -> ``"Gown"``."""
    return re.sub(r"^([OD]')([a-z])", lambda m: m.group(1) + m.group(2).upper(), word.capitalize())


def clean_title(title, fallback):
    """Tidy an ABC/metadata title: collapse spaces, drop trailing punctuation, no capitals."""
    title = re.sub(r"\s+", " ", title or "").strip().rstrip(".,;:").strip()
    if title.isupper():  # some transcribers typed titles in capitals
        title = re.sub(r"[A-Z][A-Z']*", lambda m: capital_word(m.group(0)), title)
    return title or fallback


def bach_title(stem):
    """The chorale's hymn title from music21's Riemenschneider/BWV lists, else ``BWV n``."""
    from music21.corpus import chorales

    bwv = stem.removeprefix("bwv")
    entry = chorales.ChoraleListRKBWV().byBWV.get(bwv)
    if entry is None and bwv.isdigit():
        entry = chorales.ChoraleList().byBWV.get(int(bwv))
    return clean_title(entry["title"], f"BWV {bwv}") if entry else f"BWV {bwv}"


def satb_parts(score):
    """The soprano, alto, tenor and bass parts of a chorale (instrument parts dropped).

    A part counts as a voice when its name starts with the voice's name
    (``"Soprano Oboe 1 Violin1"`` doubles the soprano line); a chorale with
    two parts for one voice (five-part settings) is not a four-voice chorale.
    """
    voices = {}
    for part in score.parts:
        words = (part.partName or "").lower().split()
        if words and words[0] in VOICES:
            voices.setdefault(words[0], []).append(part)
    if sorted(voices) == sorted(VOICES) and all(len(v) == 1 for v in voices.values()):
        return [voices[v][0] for v in VOICES]
    if len(score.parts) == 4 and not voices:
        return list(score.parts)
    raise ValueError(f"not four voices ({len(score.parts)} parts)")


def describe(score, parts, declared=None):
    """Manifest fields read from the score: metre, key, bars, tempo."""
    line = Timeline([0.0], [0])
    metres = (f"{n}/{d}" for _, n, d in time_signatures(score, line, declared))
    metre = ";".join(dict.fromkeys(metres))
    bars = len(parts[0].getElementsByClass("Measure"))
    return {"metre": metre, "key": key_label(score), "bars": bars,
            "tempo": f"{tempos(score, line)[0][1]:g}"}


def parse_task(task):
    """music21 parse of one task -> ``(score, parts, title, program, declared metres)``."""
    from music21 import converter

    if task["collection"] == "bach":
        score = converter.parse(task["path"])
        return score, satb_parts(score), bach_title(task["stem"]), BACH_PROGRAM, None
    score = converter.parse(clean_abc(task["abc"]), format="abc")
    fallback = f"{task['stem']} {task['number']}"
    title = clean_title(score.metadata.title if score.metadata else "", fallback)
    return score, list(score.parts)[:1], title, ABC_PROGRAM, declared_metres(task["abc"])


def convert(task):
    """Worker: one task -> ``{"row": manifest fields, "midi": bytes}`` or ``{"error": reason}``."""
    try:
        score, parts, title, program, declared = parse_task(task)
        data, n_notes, repaired, moved = score_to_midi(score, parts, title, program, declared)
        if n_notes == 0:
            raise ValueError("no notes")
        row = {"collection": task["collection"], "title": title, "notes": n_notes, "repaired": repaired,
               "on_grid": int(moved),
               "source": task["source"], **describe(score, parts, declared)}
        return {"task": task, "row": row, "midi": data}
    except Exception as exc:  # music21 raises many kinds; every failure is counted
        return {"task": task, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]}


# ----------------------------------------------------------------------------- output


def slugify(text, limit=60):
    """ASCII lower-case slug: ``"The Enchanted Valley"`` -> ``"the-enchanted-valley"``."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "untitled"


def file_stem(task, title):
    """A stable file name for a tune, unique within its collection by construction."""
    collection = task["collection"]
    if collection == "oneills1850":
        return f"{task['number']:04d}-{slugify(title)}"
    if collection == "airdsAirs":
        return f"{task['stem']}-{task['number']:03d}-{slugify(title)}"
    if collection == "ryansMammoth":
        return slugify(title)
    return slugify(task["stem"])


def unique_name(stem, used):
    """``stem`` or ``stem-2``, ``stem-3`` ... so no two tunes share a file."""
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}-{k}"
    used.add(name)
    return name


def write_results(results, out_dir):
    """Write the converted MIDI files; return (manifest rows, failures)."""
    rows, failures, used = [], [], set()
    for result in results:
        task = result["task"]
        if "error" in result:
            failures.append((task["collection"], task["source"], result["error"]))
            continue
        row = result["row"]
        name = unique_name(f"{task['collection']}/{file_stem(task, row['title'])}", used)
        row["file"] = f"{name}.mid"
        row["split"] = split_for_title(row["title"])
        (out_dir / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(out_dir / row["file"], "wb") as f:
            f.write(result["midi"])
        rows.append(row)
    return rows, failures


def remove_stale(out_dir, rows, collections):
    """Delete MIDI files of the rebuilt collections that this build did not write."""
    keep = {row["file"] for row in rows}
    for collection in collections:
        for path in sorted((out_dir / collection).glob("*.mid")):
            if path.relative_to(out_dir).as_posix() not in keep:
                path.unlink()


def write_csv(path, rows, fields):
    """Write ``rows`` (dicts) as CSV with ``fields`` as header, atomically."""
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def merge_manifest(path, rows, collections):
    """Keep manifest rows of collections not rebuilt now; return all rows sorted by file."""
    old = []
    if path.exists():
        with open(path, newline="", encoding="utf-8") as f:
            old = [r for r in csv.DictReader(f) if r["collection"] not in collections]
    return sorted(old + rows, key=lambda r: r["file"])


def melody_source(row):
    """Where a melody comes from, for people: book, volume, number and music21 file."""
    book, number = COLLECTION_NAMES[row["collection"]], row["source"].rpartition("#X:")[2]
    if row["collection"] == "oneills1850":
        book += f", no. {number}"
    elif row["collection"] == "airdsAirs":
        volume = re.search(r"book(\d+)", row["source"]).group(1)
        book += f", vol. {volume}, no. {number}"
    return f"{book}; music21 corpus {row['source']}"


def copy_melodies(rows, out_dir, dest):
    """Copy the hand-picked validation melodies into the package with ``melodies.csv``."""
    by_file = {row["file"]: row for row in rows}
    dest.mkdir(parents=True, exist_ok=True)
    picked = []
    for file in MELODIES:
        row = by_file.get(file)
        if row is None or row["split"] != "validation":
            raise SystemExit(f"melody {file} is not in the validation split of this build")
        name = slugify(row["title"].split(" -- ")[0]) + ".mid"
        shutil.copyfile(out_dir / file, dest / name)
        picked.append({**row, "file": name, "source": melody_source(row), "corpus_file": file})
    for stale in set(dest.glob("*.mid")) - {dest / p["file"] for p in picked}:
        stale.unlink()
    write_csv(dest / "melodies.csv", picked, MELODY_FIELDS)
    return picked


# ----------------------------------------------------------------------------- main


def report(rows, failures, out_dir):
    """Print counts per collection, failures and the size of the output folder."""
    tunes = Counter(r["collection"] for r in rows)
    notes = Counter()
    for r in rows:
        notes[r["collection"]] += int(r["notes"])
    failed = Counter(c for c, _, _ in failures)
    uneven = Counter(c for c, _, reason in failures if reason.startswith(BarsDoNotAddUp.__name__))
    fine = Counter(c for c, _, reason in failures if reason.startswith(FinerThanGrid.__name__))
    repaired = Counter(r["collection"] for r in rows if int(r["repaired"]))
    snapped = Counter(r["collection"] for r in rows if int(r["on_grid"]))
    print(f"{'collection':<14}{'tunes':>7}{'notes':>9}{'repaired':>10}{'on grid':>9}"
          f"{'uneven':>8}{'finer':>7}{'failed':>8}")
    for c in sorted(set(tunes) | set(failed)):
        print(f"{c:<14}{tunes[c]:>7}{notes[c]:>9}{repaired[c]:>10}{snapped[c]:>9}"
              f"{uneven[c]:>8}{fine[c]:>7}{failed[c]:>8}")
    print("repaired: a short bar padded to its metre; on grid: thirty-second notes moved to the nearest "
          "sixteenth/triplet position; left out (in failed): uneven, a bar longer than its metre; "
          "finer, onsets closer than the grid")
    for c, source, reason in failures:
        print(f"  skipped {source}: {reason}")
    splits = Counter(r["split"] for r in rows)
    size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    print(f"splits: {dict(sorted(splits.items()))}   data size: {size / 2**20:.2f} MB")


def build_tasks(collections, limit):
    """All conversion tasks of the chosen collections, in a fixed order."""
    root, tasks = corpus_root(), []
    for collection in collections:
        found = bach_tasks(root) if collection == "bach" else abc_tasks(collection, root)
        tasks += found[:limit] if limit else found
    return tasks


def parse_args(argv):
    """Command-line options of the build."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "data", help="output folder (data/)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--collections", nargs="+", default=list(COLLECTIONS), choices=COLLECTIONS)
    p.add_argument("--limit", type=int, default=0, help="at most N tunes per collection")
    p.add_argument("--no-melodies", action="store_true",
                   help="do not refresh the packaged melodies (implied by --limit)")
    return p.parse_args(argv)


def main(argv=None):
    """Build the corpus; return the process exit code."""
    args = parse_args(argv)
    tasks = build_tasks(args.collections, args.limit)
    print(f"converting {len(tasks)} tunes with {args.jobs} worker(s) ...", flush=True)
    results = []
    with multiprocessing.Pool(max(1, args.jobs)) as pool:
        for result in pool.imap(convert, tasks, chunksize=8):
            results.append(result)
            if len(results) % 500 == 0:
                print(f"  {len(results)}/{len(tasks)}", flush=True)
    rows, failures = write_results(results, args.out)
    if not args.limit:
        remove_stale(args.out, rows, args.collections)
    manifest = merge_manifest(args.out / "MANIFEST.csv", rows, args.collections)
    write_csv(args.out / "MANIFEST.csv", manifest, MANIFEST_FIELDS)
    if MELODIES and not (args.no_melodies or args.limit):
        copy_melodies(manifest, args.out, REPO / "music_attn" / "assets" / "melodies")
    report(rows, failures, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
