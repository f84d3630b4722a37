"""Round trips over the shipped corpus (data/), generated tunes and multi-track pieces.

For every file f and tokenizer: encode(decode(encode(f))).ids == encode(f).ids,
and the decoded notes equal the file's notes quantized to the tokenizer's grid
by an independent reference written here (the plain mido reading of
``midi_factory.mido_reference``, tempo map in exact fractions, round half up,
the documented bounds and first-in first-out re-pairing of one pitch).

With ``tempo=True, programs=True`` the decoded file also keeps each note's
program and its time in seconds, within the quantisation step (and the
rounding of tempos to whole beats per minute).

The corpus is one behaviour: a sample of it by default, every file under the
``slow`` marker; a failure lists every failing file in one message.
"""

import math
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from midi_factory import ensemble_tune, mido_reference, random_tune, save
from music_attn.music.tokenizers import PerformanceTokenizer, RemiTokenizer

ROOT = Path(__file__).resolve().parents[1]
CORPUS = sorted((ROOT / "data").rglob("*.mid"))
SAMPLE = CORPUS[:: max(1, len(CORPUS) // 24)]
REMI, PERFORMANCE = RemiTokenizer(), PerformanceTokenizer()
REMI_FULL, PERFORMANCE_FULL = RemiTokenizer(tempo=True, programs=True), PerformanceTokenizer(tempo=True, programs=True)
VELOCITIES = [128 * (i + 1) // 32 for i in range(31)] + [127]  # the "steps128" scale
needs_corpus = pytest.mark.skipif(not CORPUS, reason="data/ holds no MIDI files")


# --------------------------------------------------------------------------- independent reference


def reference_notes(path):
    """(pitch, start tick, end tick, velocity), ticks per beat and tempo changes of a file."""
    ref = mido_reference(path)
    notes = [(p, s, e, v) for p, s, e, v, *_ in ref["notes"]]
    return notes, ref["ticks_per_beat"], sorted(ref["tempos"], key=lambda t: t[0])


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


def decoded(score, per_second):
    """Notes of a decoded Score on the grid: (pitch, start, end, velocity bin), times from its ticks.

    The Score's MIDI is checked by the ids round trip (it is what gets encoded again).
    """
    tempos = list(zip(score.tempos["tick"].tolist(), score.tempos["tempo"].astype(int).tolist()))
    tpb, n = score.ticks_per_beat, score.notes
    rows = zip(n["pitch"].tolist(), n["start_tick"].tolist(), n["end_tick"].tolist(), n["velocity"].tolist())
    return sorted(
        (p, round(seconds(s, tpb, tempos) * per_second), round(seconds(e, tpb, tempos) * per_second), velocity_bin(v))
        for p, s, e, v in rows
    )


def timed_notes(ref):
    """(program, pitch, start s, end s) of a mido_reference reading, sorted."""
    tpb, tempos = ref["ticks_per_beat"], sorted(ref["tempos"], key=lambda t: t[0])
    return sorted((prog, p, float(seconds(s, tpb, tempos)), float(seconds(e, tpb, tempos)))
                  for p, s, e, _, _, _, prog in ref["notes"])


# --------------------------------------------------------------------------- the checks


def ids_round_trip(path, tokenizer):
    """The first sequence and the decoded Score, after checking encode(decode(ids)) == ids."""
    first = tokenizer.encode(path)
    result = tokenizer.decode(first.ids)
    assert result.skipped == 0, f"{result.skipped} tokens skipped"
    again = tokenizer.encode(result.score.to_mido())
    assert np.array_equal(again.ids, first.ids), "encode(decode(ids)) differs from ids"
    return first, result.score


def check_round_trip(path, tokenizer, reference, per_second):
    _, score = ids_round_trip(path, tokenizer)
    assert decoded(score, per_second) == reference(path), "decoded notes differ from the quantized reference"


def check_kept_programs_and_seconds(path, tokenizer, step, shortened):
    """ids round trip; every note keeps its program, and the time between onsets within 2 ``step`` s.

    Intervals are compared, not absolute times: a silence the tokenizer
    shortens by rule (``shortened(seconds, beats)`` is True) moves every later
    note.  Tempos are rounded to whole bpm, so intervals may also stretch by
    that rounding (relative).
    """
    _, score = ids_round_trip(path, tokenizer)
    original = mido_reference(path)
    before, after = timed_notes(original), timed_notes(mido_reference(score.to_mido()))
    assert len(before) == len(after), f"{len(before)} notes became {len(after)}"
    assert [n[:2] for n in before] == [n[:2] for n in after], "programs or pitches changed"
    us = [t for _, t in original["tempos"]] or [500000]
    drift = max(abs(round(60e6 / t) - 60e6 / t) / (60e6 / t) for t in us)  # whole-bpm rounding, relative
    beat = max(us) * 1e-6  # seconds per beat at the slowest tempo
    pairs = sorted((b[2], a[2]) for b, a in zip(before, after))  # (onset before, onset after)
    for (t0, u0), (t1, u1) in zip(pairs, pairs[1:]):
        if not shortened(t1 - t0, (t1 - t0) / beat):
            assert abs((u1 - u0) - (t1 - t0)) <= 2 * step + drift * (t1 - t0) + 1e-3, \
                f"onsets {t0:.3f} -> {t1:.3f} s came back as {u0:.3f} -> {u1:.3f} s"


def failures(paths, *checks):
    """'name: tokenizer: reason' of every (file, check) that fails."""
    out = []
    for path in paths:
        for name, check in checks:
            try:
                check(path)
            except AssertionError as exc:
                out.append(f"{Path(path).name}: {name}: {str(exc).splitlines()[0]}")
    return out


def remi_check(path):
    check_round_trip(path, REMI, remi_reference, 24)  # 12 positions per 0.5 s beat


def performance_check(path):
    check_round_trip(path, PERFORMANCE, performance_reference, 100)


def full_check(path):
    slowest = max([t for _, t in mido_reference(path)["tempos"]] or [500000])  # microseconds per beat
    # REMI shortens runs of over 16 empty bars (>= 8 beats even in 1/8), performance gaps over 5 s
    check_kept_programs_and_seconds(path, REMI_FULL, slowest * 1e-6 / 12, lambda s, beats: beats > 8)
    check_kept_programs_and_seconds(path, PERFORMANCE_FULL, 0.01, lambda s, beats: s > 5)


CORPUS_CHECKS = (("remi", remi_check), ("performance", performance_check), ("tempo+programs", full_check))


# --------------------------------------------------------------------------- tests


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


@pytest.fixture(scope="module")
def ensembles(tmp_path_factory):
    """Multi-track pieces: named tracks with programs, drums, 6 tempo changes, a metre change."""
    folder = tmp_path_factory.mktemp("ensembles")
    return [save(ensemble_tune(np.random.default_rng(i), ticks_per_beat=(480, 96, 384)[i])[0], folder / f"ens{i}.mid")
            for i in range(3)]


def test_generated_tunes_round_trip_through_both_tokenizers(generated):
    bad = failures(generated, ("remi", remi_check), ("performance", performance_check))
    assert not bad, "\n".join(bad)


def test_ensembles_keep_programs_and_seconds_with_tempo_and_program_tokens(ensembles):
    bad = failures(ensembles, ("tempo+programs", full_check))
    assert not bad, "\n".join(bad)


def test_ensemble_decodes_with_its_instruments_and_tempo_changes(ensembles):
    path = ensembles[0]
    score = REMI_FULL.decode(REMI_FULL.encode(path).ids).score
    original = mido_reference(path)
    assert {p for *_, p in mido_reference(score.to_mido())["notes"]} == {p for *_, p in original["notes"]} == {40, 42, 0}
    assert {round(60e6 / t, 3) for _, t in mido_reference(score.to_mido())["tempos"]} >= {72, 96, 131, 60, 150, 84, 110}


@pytest.mark.slow
@needs_corpus
def test_corpus_sample_round_trips():
    bad = failures(SAMPLE, *CORPUS_CHECKS)
    assert not bad, f"{len(bad)} failures:\n" + "\n".join(bad)


@needs_corpus
@pytest.mark.slow
def test_whole_corpus_round_trips():
    """Every file through REMI; every twelfth one through the others too."""
    bad = failures(CORPUS, ("remi", remi_check))
    bad += failures(CORPUS[::12], *CORPUS_CHECKS[1:])
    assert not bad, f"{len(bad)} failures:\n" + "\n".join(bad)
