"""Tests of music_attn.music.rhythm and of the corpus's rhythm: onsets on the grid, bars that fill their metre."""

import csv
from pathlib import Path

import numpy as np
import pytest

from music_attn.music import rhythm
from music_attn.music.midi import read_midi
from music_attn.music.score import NOTE_DTYPE, Score

DATA = Path(__file__).resolve().parent.parent / "data"
needs_corpus = pytest.mark.skipif(not (DATA / "MANIFEST.csv").is_file(), reason="no data/ corpus")
TPQ = 480


def score(onsets_and_lengths, signatures=((0, 4, 4),)):
    """A one-line Score from (onset, length) pairs in quarter notes."""
    notes = np.zeros(len(onsets_and_lengths), NOTE_DTYPE)
    notes["pitch"] = 60
    notes["velocity"] = 80
    notes["start_tick"] = [round(a * TPQ) for a, _ in onsets_and_lengths]
    notes["end_tick"] = [round((a + n) * TPQ) for a, n in onsets_and_lengths]
    return Score.from_ticks(notes, TPQ, time_signatures=list(signatures))


def quavers(n, start=0.0):
    return [(start + k / 2, 0.5) for k in range(n)]


def test_sixteenths_and_triplets_are_on_the_grid_but_a_thirty_second_is_not():
    on = score([(0, 0.25), (0.25, 1 / 3), (1 / 3, 1 / 3), (2 / 3, 1 / 3), (1.0, 1.0)])
    assert not rhythm.off_grid_onsets(on).any()
    off = score([(0, 0.125), (0.125, 0.125), (0.25, 0.75)])
    assert rhythm.off_grid_onsets(off).tolist() == [False, True, False]


def test_the_grid_is_counted_from_the_bar_line_after_a_change_of_metre():
    # a 7/32 bar then 2/4: the 2/4 bar starts at 0.875 quarters, so 0.875 + 0.25 is on the grid
    sigs = ((0, 7, 32), (420, 2, 4))
    s = score([(0, 0.25), (0.875, 0.25), (1.125, 2.0)], sigs)
    assert rhythm.bar_starts(s).tolist() == [0, 420, 1380]
    assert not rhythm.off_grid_onsets(s).any()
    assert rhythm.off_grid_onsets(score([(0, 0.25), (1.125, 1.0)])).tolist() == [False, True]


def test_a_tune_shifted_off_its_bar_lines_has_no_onsets_on_them():
    steady = score(quavers(24))                                  # three full bars of 4/4
    assert rhythm.missing_downbeats(steady).size == 0
    slipped = score(quavers(8) + [(4.25 + k / 2, 0.5) for k in range(16)])   # a sixteenth too late
    assert rhythm.missing_downbeats(slipped).tolist() == [4 * TPQ, 8 * TPQ, 12 * TPQ]


def test_a_pickup_bar_is_not_checked_and_a_rest_on_the_downbeat_is_found():
    s = score([(3.5, 0.5)] + [(4.0, 3.5), (7.5, 0.5), (8.5, 3.5)])     # pickup; bar 3 starts with a rest
    assert rhythm.missing_downbeats(s).tolist() == [8 * TPQ]
    assert rhythm.bar_lines(s).tolist() == [4 * TPQ, 8 * TPQ]


def test_corpus_off_grid_counts_files_with_any_off_grid_onset(tmp_path):
    score([(0, 1.0)]).write(tmp_path / "a.mid")
    score([(0, 0.125), (0.125, 1.0)]).write(tmp_path / "b.mid")
    off, total = rhythm.corpus_off_grid(sorted(tmp_path.glob("*.mid")))
    assert [p.name for p in off] == ["b.mid"] and total == 2


def _sample(n, seed=23):
    with open(DATA / "MANIFEST.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    pick = np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False)
    return [DATA / rows[i]["file"] for i in sorted(pick)]


@needs_corpus
def test_corpus_onsets_lie_on_the_sixteenth_and_triplet_grid():
    off, total = rhythm.corpus_off_grid(_sample(400))
    assert len(off) <= 0.01 * total, [p.name for p in off]


@needs_corpus
def test_corpus_bars_fill_their_metre():
    """Bar lines after the pickup fall on onsets: no tune has slipped off its bars.

    A rest or a tie on a downbeat is music, so a tune may miss a few; one whose
    bars do not add up misses most of the lines after the slip.  (Before the
    build gave ornaments no time, 159 of 4,480 files missed over a quarter.)
    """
    slipped = {}
    for path in _sample(400):
        s = read_midi(path)
        share = rhythm.missing_downbeats(s).size / max(rhythm.bar_lines(s).size, 1)
        if share > 0.25:
            slipped[path.name] = share
    assert len(slipped) <= 0.01 * 400, slipped
