"""Rhythm checks of a score: onsets on the grid, bars that fill their metre.

The grid is the one REMI writes and folk tunes and chorales need: sixteenth
notes and triplets, i.e. :data:`GRID_PER_BEAT` = 12 positions per quarter
note, counted from the bar line (bars follow the file's time signatures, as
:func:`~music_attn.music.select.bars_and_beats` counts them).  A tune whose
ornament was given time has every later onset shifted off that grid, or
whole bars that start between beats; :func:`off_grid_onsets` and
:func:`missing_downbeats` find both.

Shape legend: N notes, K bars.
"""

import numpy as np

__all__ = ["GRID_PER_BEAT", "bar_starts", "off_grid_onsets", "missing_downbeats", "bar_lines", "corpus_off_grid"]

GRID_PER_BEAT = 12      # per quarter note: sixteenths (3 steps) and eighth/sixteenth triplets (4, 2)


def bar_starts(score, end_tick=None):
    """Tick of every bar line from tick 0 up to ``end_tick`` (default: the last note's end): (K,) int64."""
    sigs = score.time_signatures
    tpb = score.ticks_per_beat
    end = int(score.notes["end_tick"].max(initial=0)) if end_tick is None else int(end_tick)
    if not len(sigs):
        sigs = np.array([(0, 4, 4)], dtype=[("tick", np.int64), ("numerator", np.int16),
                                            ("denominator", np.int16)])
    starts = []
    ticks = list(sigs["tick"]) + [max(end, int(sigs["tick"][-1])) + 1]
    for sig, next_tick in zip(sigs, ticks[1:]):
        bar_len = tpb * 4 * int(sig["numerator"]) / int(sig["denominator"])
        starts.extend(np.arange(int(sig["tick"]), next_tick, bar_len))
    return np.unique(np.round(starts).astype(np.int64))


def off_grid_onsets(score, per_beat=GRID_PER_BEAT):
    """bool (N,): notes whose onset, measured from its bar line, is not a multiple of 1/per_beat quarter."""
    notes = score.notes
    if not len(notes):
        return np.zeros(0, bool)
    starts = bar_starts(score)
    bar_tick = starts[np.searchsorted(starts, notes["start_tick"], side="right") - 1]
    rel = (notes["start_tick"] - bar_tick) * per_beat                 # in grid steps * ticks_per_beat
    return rel % score.ticks_per_beat != 0


def missing_downbeats(score):
    """Bar lines (ticks, (K,)) inside the music where no note starts.

    In a tune whose bars add up nearly every bar line after the pickup falls
    on an onset (a rest or a tie over the line now and then); in a tune whose
    bars slipped (an ornament given time) most of the later lines fall
    between onsets, in silence or inside a note.  The first bar (a pickup)
    and lines after the last note are not checked.
    """
    notes = score.notes
    if not len(notes):
        return np.zeros(0, np.int64)
    lines = bar_starts(score)
    lines = lines[(lines > notes["start_tick"].min()) & (lines < notes["end_tick"].max())]
    return lines[~np.isin(lines, notes["start_tick"])]


def bar_lines(score):
    """The bar lines :func:`missing_downbeats` checks: after the first onset, before the last note-off."""
    notes = score.notes
    lines = bar_starts(score)
    return lines[(lines > notes["start_tick"].min(initial=0)) & (lines < notes["end_tick"].max(initial=0))]


def corpus_off_grid(paths, per_beat=GRID_PER_BEAT):
    """Files among ``paths`` with at least one off-grid onset: ``(off-grid paths, files read)``."""
    from music_attn.music.midi import read_midi

    off = []
    for path in paths:
        if off_grid_onsets(read_midi(path), per_beat).any():
            off.append(path)
    return off, len(paths)
