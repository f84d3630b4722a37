"""Round trips over the shipped corpus (data/) and generated tunes.

For every file f and tokenizer: encode(decode(encode(f))).ids == encode(f).ids,
and the decoded notes equal the file's notes quantized to the tokenizer's grid
by an independent reference written here (a plain mido loop: FIFO note pairing,
tempo map in exact fractions, round half up, the documented bounds and
first-in first-out re-pairing of one pitch).
"""

import functools
import math
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import mido
import numpy as np
import pytest

from midi_factory import random_tune, save
from music_attn.music.tokenizer import PerformanceTokenizer, RemiTokenizer

ROOT = Path(__file__).resolve().parents[1]
CORPUS = sorted((ROOT / "data").rglob("*.mid"))
REMI, PERFORMANCE = RemiTokenizer(), PerformanceTokenizer()
VELOCITIES = [round(127 * (i + 1) / 32) for i in range(32)]


# --------------------------------------------------------------------------- independent reference


@functools.lru_cache(maxsize=4)
def reference_notes(path):
    """(pitch, start tick, end tick, velocity), ticks per beat and tempo changes of a file."""
    mid = mido.MidiFile(path)
    notes, tempos = [], []
    for index, trk in enumerate(mid.tracks):
        tick, sounding = 0, defaultdict(list)
        for msg in trk:
            tick += msg.time
            if msg.type == "set_tempo":
                tempos.append((tick, msg.tempo))
            if msg.type not in ("note_on", "note_off") or msg.channel == 9:
                continue
            key = (msg.channel, msg.note)
            if msg.type == "note_on" and msg.velocity > 0:
                sounding[key].append((tick, msg.velocity))
            elif sounding[key]:
                start, velocity = sounding[key].pop(0)
                notes.append((msg.note, start, tick, velocity))
        notes += [(key[1], s, tick, v) for key, held in sounding.items() for s, v in held]
    return [n for n in notes if n[2] > n[1]], mid.ticks_per_beat, sorted(tempos, key=lambda t: t[0])


def velocity_bin(v):
    dist = [abs(v - x) for x in VELOCITIES]
    return dist.index(min(dist))


def fifo(notes):
    """Per pitch, onsets in order (softer first at a tie) take the ends in order."""
    by_pitch = defaultdict(list)
    for pitch, start, end, vbin in notes:
        by_pitch[pitch].append((start, vbin, end))
    out = []
    for pitch, group in by_pitch.items():
        ends = sorted(end for _, _, end in group)
        out += [(pitch, start, end, vbin) for (start, vbin, _), end in zip(sorted(group), ends)]
    return sorted(out)


def remi_reference(path):
    notes, tpb, _ = reference_notes(path)
    q = [(p, (s * 24 + tpb) // (2 * tpb), (e * 24 + tpb) // (2 * tpb), velocity_bin(v)) for p, s, e, v in notes]
    return fifo([(p, s, min(max(e, s + 1), s + 96), vb) for p, s, e, vb in q])


def seconds(tick, tpb, tempos):
    """Exact seconds (a Fraction) at ``tick``: ties of the rounding are real ties."""
    now, last_tick, us = Fraction(0), 0, 500000
    for at, tempo in tempos:
        if at > tick:
            break
        now += Fraction((at - last_tick) * us, 10**6 * tpb)
        last_tick, us = at, tempo
    return now + Fraction((tick - last_tick) * us, 10**6 * tpb)


def performance_reference(path):
    notes, tpb, tempos = reference_notes(path)
    steps = []
    for p, s, e, v in notes:
        start = math.floor(seconds(s, tpb, tempos) * 100 + Fraction(1, 2))
        end = math.floor(seconds(e, tpb, tempos) * 100 + Fraction(1, 2))
        steps.append((p, start, max(end, start + 1), velocity_bin(v)))
    steps = fifo(steps)
    times, moved, now = sorted({t for n in steps for t in n[1:3]}), {}, 0
    for previous, t in zip([0] + times, times):  # gaps between events shortened to 5 s
        now += min(t - previous, 500)
        moved[t] = now
    return sorted((p, moved[s], moved[e], vb) for p, s, e, vb in steps)


def decoded(midi, per_second):
    """Notes of a decoded PrettyMIDI on the grid: (pitch, start, end, velocity bin)."""
    return sorted(
        (n.pitch, round(n.start * per_second), round(n.end * per_second), velocity_bin(n.velocity))
        for inst in midi.instruments
        for n in inst.notes
    )


# --------------------------------------------------------------------------- the checks


def check_round_trip(path, tokenizer, reference, per_second):
    first = tokenizer.encode(path)
    result = tokenizer.decode(first.ids)
    assert result.skipped == 0
    assert np.array_equal(tokenizer.encode(result.midi).ids, first.ids)
    assert decoded(result.midi, per_second) == reference(path)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Tunes in several metres, tempos, resolutions and voice counts."""
    folder = tmp_path_factory.mktemp("tunes")
    metres = [((4, 4),), ((3, 4), (6, 8)), ((2, 4), (4, 4), (3, 4)), ((6, 8), (9, 8), (2, 2))]
    paths = []
    for i in range(12):
        rng = np.random.default_rng(i)
        mid, _ = random_tune(rng, ticks_per_beat=[96, 480, 960, 384][i % 4], metres=metres[i % 4],
                             bpm=[80, 120, 150][i % 3], voices=1 + i % 3, n_bars=12)
        paths.append(save(mid, folder / f"tune{i:02d}.mid"))
    return paths


@pytest.mark.parametrize("index", range(12), ids=lambda i: f"tune{i:02d}.mid")
def test_generated_tunes_round_trip_through_remi(generated, index):
    check_round_trip(generated[index], REMI, remi_reference, 24)  # 12 positions per 0.5 s beat


@pytest.mark.parametrize("index", range(12), ids=lambda i: f"tune{i:02d}.mid")
def test_generated_tunes_round_trip_through_performance(generated, index):
    check_round_trip(generated[index], PERFORMANCE, performance_reference, 100)


_NO_CORPUS = [pytest.param(None, marks=pytest.mark.skip(reason="data/ holds no MIDI files"))]


@pytest.mark.parametrize("path", CORPUS or _NO_CORPUS, ids=lambda p: getattr(p, "name", "none"))
def test_corpus_round_trip(path):
    """Every corpus file through REMI; every sixth one through the performance tokenizer too."""
    check_round_trip(path, REMI, remi_reference, 24)
    if CORPUS.index(path) % 6 == 0:
        check_round_trip(path, PERFORMANCE, performance_reference, 100)
