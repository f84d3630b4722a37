"""Continuations judged against the real ones: the protocol of ``docs/continuations.md``.

Each validation song's first bars are the prompt (``prompt_bars=(1, 4)``), the
model writes ``bars`` more (8) with :func:`~music_attn.runtime.continue_midi`,
and the new notes are compared with the song's own next bars (5-12):

* the five core features of :mod:`music_attn.music.features`, each as the
  overlap area (OA) of its distribution over the generated continuations with
  its distribution over the real ones (1 = the same distribution);
* bar repeats: the share of continuation bars that repeat an earlier bar
  (prompt included) note for note, generated and real;
* early endings: the share of continuations with notes in fewer than
  ``bars`` bars; chords: the share with two new notes starting together;
  prompt bar: the share that added notes to the prompt's bars.

Shape legend: S songs.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from music_attn.music import features as F
from music_attn.music import rhythm
from music_attn.music.midi import read_midi
from music_attn.runtime.continue_midi import continue_midi

__all__ = ["Protocol", "validation_songs", "real_continuation", "measure", "evaluate"]

FOLK = ("oneills1850", "ryansMammoth", "airdsAirs")


@dataclass(frozen=True)
class Protocol:
    """The bars of the prompt and of the continuation (bars from 1, the pickup is bar 1)."""

    prompt_bars: tuple = (1, 4)
    bars: int = 8

    @property
    def first_new(self):
        return self.prompt_bars[1] + 1


def validation_songs(data_dir, n, protocol=Protocol(), collections=FOLK):
    """The first ``n`` validation songs (by file name) of ``collections`` long enough for the protocol."""
    with open(Path(data_dir) / "MANIFEST.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "validation" and r["collection"] in collections]
    need = protocol.first_new + protocol.bars
    songs = []
    for row in sorted(rows, key=lambda r: r["file"]):
        path = Path(data_dir) / row["file"]
        if len(rhythm.bar_starts(read_midi(path))) > need:
            songs.append(path)
        if len(songs) == n:
            break
    return songs


def _lines(score, protocol):
    """Bar lines (ticks) from bar 1 to the line after the last bar of the protocol."""
    far = score.ticks_per_beat * 4 * 8 * (protocol.first_new + protocol.bars + 2)
    return rhythm.bar_starts(score, end_tick=max(far, int(score.notes["end_tick"].max(initial=0))))


def real_continuation(path, protocol=Protocol()):
    """(prompt notes, continuation notes, bar lines) of a song as it was written."""
    score = read_midi(path)
    lines = _lines(score, protocol)
    a, b = protocol.prompt_bars
    start = score.notes["start_tick"]
    prompt = score.notes[(start >= lines[a - 1]) & (start < lines[b])]
    new = score.notes[(start >= lines[b]) & (start < lines[b + protocol.bars])]
    return prompt, new, lines


def measure(prompt, new, lines, protocol=Protocol()):
    """The features and form counts of one continuation (``new`` notes after ``prompt``)."""
    a, b = protocol.prompt_bars
    window = lines[a - 1: b + protocol.bars + 1]
    new_lines = lines[b: b + protocol.bars + 1]
    contents = F.bar_contents(np.concatenate([prompt, new]), window)
    repeats, total = F.bar_repeats(contents, b - a + 1)
    bar_of = np.searchsorted(new_lines, new["start_tick"], side="right") - 1
    filled = len(np.unique(bar_of[(bar_of >= 0) & (bar_of < protocol.bars)]))
    return {**F.features(new, new_lines), "repeats": repeats, "repeat_bars": total,
            "early": filled < protocol.bars,
            "chords": bool(np.any(np.diff(new["start_tick"]) == 0)) if len(new) else False,
            "in_prompt": bool(np.any(new["start_tick"] < lines[b]))}


def _generated(path, model, protocol, seed, sampling):
    """(prompt notes, new notes, bar lines) of the model's continuation of one song."""
    result = continue_midi(path, model=model, prompt_bars=protocol.prompt_bars, bars=protocol.bars,
                           seed=seed, **sampling)
    return result.prompt.notes, np.sort(result.new_notes, order=["start_tick", "pitch"]), _lines(result, protocol)


def summary(real, generated):
    """One row: OA of each feature, their mean, and the form measures of the generated set."""
    row = {f: F.overlap_area([r[f] for r in real], [g[f] for g in generated]) for f in F.FEATURES}
    row["mean_oa"] = float(np.mean([row[f] for f in F.FEATURES]))
    for name, rows in (("real", real), ("generated", generated)):
        row[f"{name}_repeats"] = sum(r["repeats"] for r in rows) / max(sum(r["repeat_bars"] for r in rows), 1)
    for key in ("early", "chords", "in_prompt"):
        row[key] = float(np.mean([g[key] for g in generated]))
    return row


def evaluate(songs, model, settings, protocol=Protocol(), seed=0, progress=None):
    """{setting name: summary row} for each ``settings`` entry (name -> sampling keywords of continue_midi)."""
    real = [measure(*real_continuation(p, protocol), protocol) for p in songs]
    out = {}
    for name, sampling in settings.items():
        generated = []
        for i, path in enumerate(songs):
            generated.append(measure(*_generated(path, model, protocol, seed + i, sampling), protocol))
        out[name] = summary(real, generated)
        if progress:
            progress(name, out[name])
    return out
