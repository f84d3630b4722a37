"""Features of a passage of music, for comparing generated continuations with real ones.

The five core features of Yang & Lerch (2020) "On the evaluation of
generative models in music" as the MusPy metrics compute them, plus the two
measures of form that NLL does not see (bar repeats, early endings), and the
overlap area (OA) of two sets' distributions of a feature.

Every feature takes a NOTE_DTYPE array (and, for bar-based ones, the bar
lines in ticks and the grid); notes are in onset order.

Shape legend: N notes, K bar lines, G grid points.
"""

import numpy as np

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)   # a natural minor scale is the major scale of its relative

__all__ = ["FEATURES", "pitch_class_entropy", "scale_consistency", "pitch_range", "mean_interval",
           "groove_consistency", "bar_contents", "bar_repeats", "overlap_area", "features"]

FEATURES = ("pitch_class_entropy", "scale_consistency", "pitch_range", "mean_interval", "groove_consistency")


def pitch_class_entropy(notes):
    """Entropy (bits) of the pitch-class histogram: 0 for one pitch class, log2(12) for all alike."""
    counts = np.bincount(np.asarray(notes["pitch"]) % 12, minlength=12).astype(float)
    p = counts[counts > 0] / max(counts.sum(), 1)
    return float(-(p * np.log2(p)).sum())


def scale_consistency(notes):
    """Largest share of notes inside one major (or natural minor, its relative) scale."""
    pcs = np.asarray(notes["pitch"]) % 12
    if not pcs.size:
        return float("nan")
    return max(float(np.isin(pcs, [(t + d) % 12 for d in MAJOR_SCALE]).mean()) for t in range(12))


def pitch_range(notes):
    """Highest minus lowest pitch, semitones."""
    pitches = np.asarray(notes["pitch"])
    return float(pitches.max() - pitches.min()) if pitches.size else float("nan")


def mean_interval(notes):
    """Mean absolute interval (semitones) between consecutive onsets (the top note of a chord)."""
    starts, pitches = np.asarray(notes["start_tick"]), np.asarray(notes["pitch"])
    if not starts.size:
        return float("nan")
    last = np.r_[starts[1:] != starts[:-1], True]              # the last (highest) note at each onset
    line = pitches[last]
    return float(np.abs(np.diff(line)).mean()) if line.size > 1 else 0.0


def _bar_grid(notes, lines, steps):
    """bool (K-1, steps): onsets of each bar on a grid of ``steps`` points per bar."""
    starts = np.asarray(notes["start_tick"])
    k = np.searchsorted(lines, starts, side="right") - 1
    ok = (k >= 0) & (k < len(lines) - 1)
    span = (lines[1:] - lines[:-1]).astype(float)
    pos = np.floor((starts[ok] - lines[k[ok]]) / span[k[ok]] * steps).astype(int)
    grid = np.zeros((len(lines) - 1, steps), bool)
    grid[k[ok], np.clip(pos, 0, steps - 1)] = True
    return grid


def groove_consistency(notes, lines, steps=48):
    """1 - mean Hamming distance between the onset patterns of consecutive bars (MusPy), in [0, 1]."""
    grid = _bar_grid(notes, np.asarray(lines), steps)
    if len(grid) < 2:
        return float("nan")
    return float(1 - np.mean(np.sum(grid[1:] != grid[:-1], axis=1) / steps))


def bar_contents(notes, lines):
    """One hashable per bar between the lines: its notes as (offset in the bar, pitch, length) tuples."""
    starts = np.asarray(notes["start_tick"])
    k = np.searchsorted(lines, starts, side="right") - 1
    bars = [[] for _ in range(len(lines) - 1)]
    for i in np.flatnonzero((k >= 0) & (k < len(lines) - 1)):
        n = notes[i]
        bars[k[i]].append((int(n["start_tick"] - lines[k[i]]), int(n["pitch"]),
                           int(n["end_tick"] - n["start_tick"])))
    return [tuple(sorted(b)) for b in bars]


def bar_repeats(contents, first):
    """(repeats, bars): bars from index ``first`` on whose notes, note for note, fill an earlier bar.

    Empty bars are not counted either way.
    """
    seen = {c for c in contents[:first] if c}
    repeats = total = 0
    for c in contents[first:]:
        if not c:
            continue
        total += 1
        repeats += c in seen
        seen.add(c)
    return repeats, total


def features(notes, lines):
    """{feature: value} of the five core features of a passage between bar lines ``lines``."""
    return {"pitch_class_entropy": pitch_class_entropy(notes), "scale_consistency": scale_consistency(notes),
            "pitch_range": pitch_range(notes), "mean_interval": mean_interval(notes),
            "groove_consistency": groove_consistency(notes, lines)}


def overlap_area(a, b, points=512):
    """Overlap area of the Gaussian-KDE densities of two samples (Yang & Lerch 2020): 1 = identical.

    Bandwidth by Scott's rule per sample (at least 1% of the joint range, so a
    constant feature still has a density); NaNs are left out.
    """
    a, b = (np.asarray(x, float) for x in (a, b))
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not (a.size and b.size):
        return float("nan")
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    span = max(hi - lo, 1e-6)
    x = np.linspace(lo - 0.5 * span, hi + 0.5 * span, points)                 # (G,)
    dens = [_kde(s, x, span) for s in (a, b)]
    return float(np.trapezoid(np.minimum(*dens), x))


def _kde(sample, x, span):
    """Gaussian KDE of ``sample`` at points ``x`` (G,), normalized on the grid."""
    h = max(sample.std(ddof=1) * sample.size ** (-1 / 5) if sample.size > 1 else 0.0, 0.01 * span)
    z = (x[:, None] - sample[None, :]) / h                                    # (G, n)
    d = np.exp(-0.5 * z ** 2).sum(axis=1)
    return d / np.trapezoid(d, x)
