"""Voice leading of four-part writing, as a chorale teacher marks it.

The input is a four-voice grid: int (S, 4), soprano, alto, tenor, bass at each
sixteenth-note step, -1 where a voice is silent (the JSB Chorales layout).  The
grid is read as a sequence of *sonorities*: runs of equal rows are one chord,
and the rules look at each chord and at each move from one chord to the next.

What is counted (intervals in semitones, ``mod 12`` for interval classes):

* **parallel fifths / octaves**: two voices both move, in the same direction,
  from a perfect fifth (class 7) or octave/unison (class 0) into the same class.
* **hidden octaves**: soprano and bass move the same way into an octave (class 0)
  from another interval, with a leap (more than 2 semitones) in the soprano.
* **crossing**: a lower voice above the voice over it (unisons are not crossing).
* **spacing**: more than an octave between soprano and alto, or alto and tenor.
* **out of range**: a note outside its voice's range (:data:`RANGES`).
* **incomplete chords**: a chord of four sounding voices whose pitch classes are
  not a complete triad (root, third and fifth) or a complete seventh chord.

Rates are per 100 *voice-pair moves* (a pair of sounding voices of which at least
one changes pitch from one chord to the next) for parallels and hidden octaves,
and per step (sixteenth) for crossing, spacing, range and chords, so that long
notes count as long as they sound.

Shape legend: S steps, K chords.
"""

from dataclasses import dataclass, field

import numpy as np

__all__ = ["RANGES", "VoiceLeading", "voice_leading", "chord_is_complete", "PAIRS"]

VOICE_NAMES = ("soprano", "alto", "tenor", "bass")
# The usual choir ranges, widened by a step each way (Bach writes to these).
RANGES = {"soprano": (58, 81), "alto": (53, 76), "tenor": (46, 69), "bass": (36, 64)}
# The six voice pairs (upper, lower).
PAIRS = tuple((a, b) for a in range(4) for b in range(a + 1, 4))
# Complete chords as pitch-class sets relative to their root: triads and seventh chords.
_TRIADS = ((0, 4, 7), (0, 3, 7), (0, 3, 6), (0, 4, 8))
_SEVENTHS = ((0, 4, 7, 10), (0, 4, 7, 11), (0, 3, 7, 10), (0, 3, 6, 10), (0, 3, 6, 9), (0, 3, 7, 11))
_COMPLETE = frozenset(frozenset((r + i) % 12 for i in shape) for r in range(12)
                      for shape in _TRIADS + _SEVENTHS)

COUNTS = ("parallels", "hidden_octaves", "crossing", "spacing", "out_of_range", "incomplete",
          "pair_moves", "steps", "chord_steps")


def chord_is_complete(pitches):
    """True when the sounding pitches (-1 = silent) make a complete triad or seventh chord."""
    classes = frozenset(int(p) % 12 for p in pitches if p >= 0)
    return classes in _COMPLETE


@dataclass
class VoiceLeading:
    """Counts of a piece and of each bar (see the module docstring for the rules).

    counts : dict name -> int over the whole piece (:data:`COUNTS`).
    bars : list of (bar, dict name -> int), bars counted from 1, in order.
    """
    counts: dict
    bars: list = field(default_factory=list)

    @property
    def parallels_per_100(self):
        """Parallel fifths and octaves per 100 voice-pair moves."""
        return 100.0 * self.counts["parallels"] / max(self.counts["pair_moves"], 1)

    @property
    def hidden_per_100(self):
        return 100.0 * self.counts["hidden_octaves"] / max(self.counts["pair_moves"], 1)

    def share(self, name):
        """Fraction of steps (``incomplete``: of four-voice steps) flagged by rule ``name``."""
        total = self.counts["chord_steps" if name == "incomplete" else "steps"]
        return self.counts[name] / max(total, 1)

    @property
    def complete_share(self):
        """Fraction of four-voice steps that are complete triads or seventh chords."""
        return 1.0 - self.share("incomplete")

    def summary(self):
        """One line a musician reads."""
        c = self.counts
        return (f"parallel 5ths/8ves {c['parallels']} ({self.parallels_per_100:.2f} per 100 voice-pair moves), "
                f"hidden octaves {c['hidden_octaves']}, crossing {100 * self.share('crossing'):.1f}% of steps, "
                f"spacing over an octave {100 * self.share('spacing'):.1f}%, out of range "
                f"{100 * self.share('out_of_range'):.1f}%, complete triads or sevenths "
                f"{100 * self.complete_share:.0f}% of four-voice steps")

    def table(self):
        """The bars with a fault, one line each under a header (empty when no bar has one)."""
        names = ("parallels", "hidden_octaves", "crossing", "spacing", "out_of_range", "incomplete")
        rows = [f"{bar:>5}  " + " ".join(f"{c[n]:>{w}}" for n, w in zip(names, (8, 8, 8, 8, 6, 10)))
                for bar, c in self.bars if any(c[n] for n in names)]
        head = (f"{'bar':>5}  {'parallel':>8} {'hidden 8':>8} {'crossing':>8} {'spacing':>8} {'range':>6} "
                f"{'incomplete':>10}   (crossing, spacing, range, incomplete: sixteenth steps)")
        return "\n".join([head] + rows) if rows else ""

    def to_json(self):
        """:meth:`to_dict` as JSON text."""
        import json
        return json.dumps(self.to_dict(), indent=1)

    def to_dict(self):
        return {"counts": dict(self.counts), "parallels_per_100": self.parallels_per_100,
                "hidden_octaves_per_100": self.hidden_per_100,
                "crossing_share": self.share("crossing"), "spacing_share": self.share("spacing"),
                "out_of_range_share": self.share("out_of_range"),
                "complete_share": self.complete_share,
                "bars": [{"bar": b, **c} for b, c in self.bars]}


def _chords(grid):
    """(first step of each chord (K,), the chords (K, 4)): runs of equal rows merged."""
    if len(grid) == 0:
        return np.zeros(0, np.int64), grid
    change = np.ones(len(grid), bool)
    change[1:] = np.any(grid[1:] != grid[:-1], axis=1)
    first = np.flatnonzero(change)
    return first, grid[first]


def motion_flags(prev, cur):
    """Per pair (6,) of one chord move: (pair move, parallel, hidden octave) as bool arrays.

    prev, cur : int (4,) the two chords (-1 silent).
    """
    move, parallel, hidden = (np.zeros(len(PAIRS), bool) for _ in range(3))
    for k, (a, b) in enumerate(PAIRS):
        if min(prev[a], prev[b], cur[a], cur[b]) < 0:
            continue
        da, db = cur[a] - prev[a], cur[b] - prev[b]
        move[k] = da != 0 or db != 0
        same_way = da * db > 0
        before, after = (prev[a] - prev[b]) % 12, (cur[a] - cur[b]) % 12
        parallel[k] = same_way and before == after and before in (0, 7)
        hidden[k] = (same_way and (a, b) == (0, 3) and after == 0 and before != 0 and abs(da) > 2)
    return move, parallel, hidden


def step_flags(grid):
    """bool (S, 4) columns: crossing, spacing, out of range, incomplete; and four-voice steps (S,)."""
    grid = np.asarray(grid, dtype=np.int64)
    sounding = grid >= 0
    crossing = np.zeros(len(grid), bool)
    for upper in range(3):
        lower = upper + 1
        crossing |= sounding[:, upper] & sounding[:, lower] & (grid[:, lower] > grid[:, upper])
    spacing = np.zeros(len(grid), bool)
    for upper in range(2):
        both = sounding[:, upper] & sounding[:, upper + 1]
        spacing |= both & (grid[:, upper] - grid[:, upper + 1] > 12)
    low = np.array([RANGES[v][0] for v in VOICE_NAMES])
    high = np.array([RANGES[v][1] for v in VOICE_NAMES])
    out = np.any(sounding & ((grid < low) | (grid > high)), axis=1)
    full = sounding.all(axis=1)
    incomplete = full & ~np.array([chord_is_complete(row) for row in grid.tolist()], bool) \
        if len(grid) else np.zeros(0, bool)
    return np.stack([crossing, spacing, out, incomplete], axis=1), full


def voice_leading(grid, bar_of_step=None):
    """Count the voice-leading faults of a four-voice grid, for the piece and for each bar.

    Parameters
    ----------
    grid : int (S, 4) soprano, alto, tenor, bass per sixteenth (-1 silent), or a
        Score of four voices (read onto the grid by the four-voice tokenizer).
    bar_of_step : int (S,), the bar (from 1) of each step; default 4/4 from step 0.

    Returns
    -------
    VoiceLeading
    """
    grid = np.asarray(grid, dtype=np.int64)
    if grid.ndim != 2 or grid.shape[1] != 4:
        raise ValueError(f"a four-voice grid has shape (steps, 4), got {grid.shape}")
    S = len(grid)
    bars = np.arange(S) // 16 + 1 if bar_of_step is None else np.asarray(bar_of_step, np.int64)
    per_step = np.zeros((S, len(COUNTS)), np.int64)
    flags, full = step_flags(grid)
    per_step[:, 2:6] = flags
    per_step[:, 7] = 1
    per_step[:, 8] = full
    first, chords = _chords(grid)
    for k in range(1, len(chords)):
        move, parallel, hidden = motion_flags(chords[k - 1], chords[k])
        per_step[first[k], 0] += parallel.sum()
        per_step[first[k], 1] += hidden.sum()
        per_step[first[k], 6] += move.sum()
    totals = dict(zip(COUNTS, per_step.sum(axis=0).tolist()))
    by_bar = []
    for bar in np.unique(bars).tolist():
        rows = per_step[bars == bar].sum(axis=0)
        by_bar.append((bar, dict(zip(COUNTS, rows.tolist()))))
    return VoiceLeading(totals, by_bar)
