"""Head roles: what each attention head does, in musical terms.

For every layer and head, the share of its note attention that goes to each
musical relation between a query note ``i`` and a key note ``j``:

``previous``
    ``j`` is the previous note of ``i``'s voice: the note of the same track
    with the latest onset before ``i``'s onset (of several, the one nearest in
    pitch, then the lower).
``onset``
    ``j != i`` starts at the same onset as ``i`` (the other notes of a chord).
``pitch``
    ``j`` starts before ``i`` and has the same pitch.
``pitch_class``
    ``j`` starts before ``i`` and has the same pitch class (octaves included,
    so this contains ``pitch``).
``bar_back``
    ``j`` starts at the same position in the bar, one bar earlier.
``position``
    ``j`` starts at the same position in the bar, in any earlier bar
    (contains ``bar_back``).
``melody``
    ``i`` is not a melody note and ``j`` is one (the melody: the track of the
    highest mean pitch, in a piece of two tracks or more): an accompanying or
    lower voice listening to the tune (the harmonizer's alto, tenor and bass).
``melody_now``
    ``j`` is the melody note sounding where ``i`` starts (the latest melody onset
    at or before ``i``'s), for ``i`` not in the melody: the note it harmonizes.
``structure``
    structure tokens (bar lines, positions, metre, BOS: tokens of no note).

Share.  With ``A[i, j]`` the note attention of one head (the mean, over the
tokens of note ``i``, of their summed attention to the tokens of note ``j``)
and ``R_i`` the key notes in relation to ``i``::

    share = mean over query notes i of  sum over j in R_i of A[i, j]

and for ``structure`` the mean of the structure share.  The relations overlap
(``pitch`` lies inside ``pitch_class``), so shares need not sum to one.

Uniform baseline and lift.  ``uniform`` is the share that attention spread
evenly over the visible notes ``V_i`` (the notes ``i`` can see: itself and
the earlier notes inside its window) would give: the mean over ``i`` of
``|R_i| / |V_i|``; for ``structure``, even attention over the visible tokens
gives the mean share of structure tokens among them.  ``lift = share /
uniform``: 1 is what a head with no preference gives, 5 means the relation
gets five times its fair share.  A head's *strongest* relation is the one
with the largest lift among those with at least ``min_share`` of its
attention (the largest share when none has).

Shape legend: L layers, H heads, N notes, R relations, E stored entries.
"""

import numpy as np

__all__ = ["RELATIONS", "RELATION_NAMES", "head_roles", "maps_roles", "strongest", "format_roles", "previous_in_voice", "relation_masks",
           "dense_rows", "bar_lines", "bar_and_position", "note_context", "structure_baseline", "melody_above",
           "melody_track_notes"]

RELATIONS = ("previous", "onset", "pitch", "pitch_class", "bar_back", "position", "melody", "melody_now",
             "structure")
NOTE_RELATIONS = RELATIONS[:-1]
RELATION_NAMES = {"previous": "previous note", "onset": "same onset", "pitch": "same pitch",
                  "pitch_class": "same pitch class", "bar_back": "one bar back",
                  "position": "same place in bar", "melody": "to the melody",
                  "melody_now": "melody note above", "structure": "structure tokens"}
MIN_SHARE = 0.1            # a relation must take this share of a head's attention to be its role
_TICKS = 480               # positions in the bar are compared on a grid of 1/480 beat
_ONSET_TOLERANCE = 1e-6    # seconds


def dense_rows(note_attention):
    """Adapter: dense (L, H, N, N) note attention -> ``rows(layer, head)`` giving CSR rows.

    The CSR of one head is ``(indptr (N + 1,), keys (E,), weights (E,))`` holding
    every key note ``j <= i`` of each query note ``i`` (a causal model sees no later note).
    """
    att = np.asarray(note_attention)
    N = att.shape[-1]
    qi, kj = np.tril_indices(N)                                   # row-major: sorted by query
    indptr = np.concatenate(([0], np.cumsum(np.arange(1, N + 1))))

    def rows(layer, head):
        return indptr, kj, att[layer, head][qi, kj]
    return rows


def previous_in_voice(start, pitch, track):
    """Index of each note's previous note in its track, -1 for none: (N,) int.

    The previous note is the note of the same track with the latest onset before
    this one's; among several, the nearest in pitch (then the lower).
    """
    start, pitch, track = (np.asarray(a) for a in (start, pitch, track))
    prev = np.full(len(start), -1)
    for t in np.unique(track):
        idx = np.flatnonzero(track == t)
        idx = idx[np.lexsort((pitch[idx], start[idx]))]                 # by onset, then pitch
        s, p = start[idx], pitch[idx].astype(np.int64)
        group = np.concatenate(([0], np.cumsum(np.diff(s) > _ONSET_TOLERANCE)))   # onset number
        first = np.searchsorted(group, group, side="left")              # where each group begins
        key = group * 1024 + p                                          # sorted: group, then pitch
        has = group > 0
        lo, hi = np.searchsorted(group, group - 1, side="left"), first   # the previous group: [lo, hi)
        at = np.clip(np.searchsorted(key, (group - 1) * 1024 + p), lo, hi - 1)
        below = np.clip(at - 1, lo, hi - 1)
        pick = np.where(np.abs(p[below] - p) <= np.abs(p[at] - p), below, at)
        prev[idx[has]] = idx[pick[has]]
    return prev


def relation_masks(qi, kj, notes, prev):
    """Which (query, key) pairs are in each note relation: dict name -> bool (E,).

    qi, kj : int (E,) query and key note of each pair; ``notes`` has ``start``,
    ``pitch``, ``bar`` and ``position`` (beats from the bar line) arrays (N,).
    """
    start, pitch = np.asarray(notes["start"]), np.asarray(notes["pitch"])
    bar = np.asarray(notes["bar"])
    pos = np.rint(np.asarray(notes["position"], dtype=np.float64) * _TICKS).astype(np.int64)
    earlier = start[kj] < start[qi] - _ONSET_TOLERANCE
    same_pos = pos[kj] == pos[qi]
    melody = np.asarray(notes.get("melody", np.zeros(len(start), bool)), dtype=bool)
    listening = ~melody[qi] & melody[kj]
    return {
        "previous": kj == prev[qi],
        "onset": (kj != qi) & (np.abs(start[kj] - start[qi]) <= _ONSET_TOLERANCE),
        "pitch": earlier & (pitch[kj] == pitch[qi]),
        "pitch_class": earlier & (pitch[kj] % 12 == pitch[qi] % 12),
        "bar_back": same_pos & (bar[kj] == bar[qi] - 1),
        "position": same_pos & (bar[kj] < bar[qi]),
        "melody": listening,
        "melody_now": listening & (kj == melody_above(start, melody)[qi]),
    }


def melody_above(start, melody):
    """Index of the melody note sounding at each note's onset (the latest melody onset at or
    before it; among equal onsets the last in order), -1 for none: (N,) int."""
    start = np.asarray(start, dtype=np.float64)
    idx = np.flatnonzero(melody)
    if not idx.size:
        return np.full(len(start), -1)
    idx = idx[np.argsort(start[idx], kind="stable")]
    at = np.searchsorted(start[idx], start + _ONSET_TOLERANCE, side="right") - 1
    return np.where(at >= 0, idx[np.maximum(at, 0)], -1)


def head_roles(rows, n_layers, n_heads, notes, structure_share, structure_uniform):
    """Share, uniform baseline and lift of every relation for every head.

    Parameters
    ----------
    rows : callable ``(layer, head) -> (indptr (N + 1,), keys (E,), weights (E,))``
        Note attention of one head as CSR rows (query note -> key notes); the
        notes a query can see are the keys stored for it in any head (see `dense_rows`).
    n_layers, n_heads : int
    notes : mapping of arrays (N,)
        ``pitch``, ``start`` (seconds), ``bar`` (int), ``position`` (beats
        from the bar line) and ``track``.
    structure_share : array (L, H, N)
        Attention of each note to structure tokens.
    structure_uniform : array (N,)
        Share of structure tokens among the tokens each note can see.

    Returns
    -------
    dict with ``relations`` (R names), ``share`` (L, H, R), ``uniform`` (R,),
    ``lift`` (L, H, R; NaN where the baseline is 0).
    """
    N = len(notes["pitch"])
    prev = previous_in_voice(notes["start"], notes["pitch"], notes["track"])
    share = np.zeros((n_layers, n_heads, len(RELATIONS)))
    seen = code = masks = None                                          # visible pairs, as i * N + j
    for layer in range(n_layers):
        for head in range(n_heads):
            indptr, keys, weights = rows(layer, head)
            qi = np.repeat(np.arange(N), np.diff(indptr))               # (E,)
            here = qi * N + np.asarray(keys, dtype=np.int64)
            if code is None or not np.array_equal(here, code):          # usually every head stores the same keys
                code, masks = here, relation_masks(qi, np.asarray(keys), notes, prev)
                picks = [np.flatnonzero(masks[r]) for r in NOTE_RELATIONS]
                seen = _union(seen, code)
            w = np.asarray(weights)
            share[layer, head, :-1] = [w[p].astype(np.float64).sum() / max(N, 1) for p in picks]
    share[..., -1] = np.asarray(structure_share, dtype=np.float64).mean(-1)
    seen = np.zeros(0, np.int64) if seen is None else seen
    if code is None or not np.array_equal(seen, code):
        masks = relation_masks(seen // max(N, 1), seen % max(N, 1), notes, prev)
    visible = (seen // max(N, 1), masks)
    uniform = _uniform(visible, N, structure_uniform)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where(uniform > 0, share / np.where(uniform > 0, uniform, 1), np.nan)
    return {"relations": RELATIONS, "share": share, "uniform": uniform, "lift": lift}


def _union(seen, code):
    """Sorted distinct values of ``seen`` (sorted and distinct, or None) and ``code``: `np.union1d`."""
    if code.size > 1 and not np.all(code[1:] > code[:-1]):
        code = np.unique(code)
    if seen is None or not seen.size:
        return code
    at = np.minimum(np.searchsorted(seen, code), seen.size - 1)
    new = code[seen[at] != code]
    return np.insert(seen, np.searchsorted(seen, new), new)


def _uniform(visible, N, structure_uniform):
    """Shares (R,) that even attention over the visible notes (and tokens, for structure) gives."""
    qi, masks = visible
    n_visible = np.maximum(np.bincount(qi, minlength=N), 1)                  # (N,)
    out = [np.mean(np.bincount(qi[masks[r]], minlength=N) / n_visible) for r in NOTE_RELATIONS]
    return np.array(out + [float(np.mean(structure_uniform))])


def strongest(roles, *, min_share=MIN_SHARE):
    """One row per head, sorted by lift (largest first): dicts with layer, head, relation, share, lift.

    Layers and heads are counted from 1, as on the page and the command line.
    """
    share, lift = roles["share"], np.nan_to_num(roles["lift"], nan=0.0)
    out = []
    for layer, head in np.ndindex(share.shape[:2]):
        ok = share[layer, head] >= min_share
        r = int(np.argmax(np.where(ok, lift[layer, head], -1))) if ok.any() else int(np.argmax(share[layer, head]))
        out.append({"layer": layer + 1, "head": head + 1, "relation": roles["relations"][r],
                    "share": float(share[layer, head, r]), "lift": float(lift[layer, head, r])})
    return sorted(out, key=lambda row: -row["lift"])


def format_roles(table):
    """The `strongest` table as text, one line per head (what ``inspect --heads`` prints)."""
    lines = ["layer  head  role                 share   lift"]
    for row in table:
        lines.append(f"{row['layer']:>5}  {row['head']:>4}  {RELATION_NAMES[row['relation']]:<19}"
                     f"{100 * row['share']:>5.0f}%  {row['lift']:>5.1f}x")
    return "\n".join(lines)


# ------------------------------------------------------- notes in their bars
def bar_lines(score, until=None):
    """Bar lines of ``score`` from its time signatures, up to its end (or to tick ``until``).

    Returns ticks (B + 1,) of every bar line (the last closes the last bar) and
    each bar's numerator and denominator (B,).  A time signature starts a new
    bar where it stands.  ``until`` bounds the work by what the caller needs
    (one note held for millions of bars needs only its first bar line).
    """
    sig = score.time_signatures
    tpb, end = score.ticks_per_beat, max(int(score.end_tick), 1)
    if until is not None:
        end = max(min(end, int(until)), 1)
    ticks, num, den = [], [], []
    for k in range(len(sig)):
        stop = sig["tick"][k + 1] if k + 1 < len(sig) else end
        length = tpb * 4 * int(sig["numerator"][k]) / int(sig["denominator"][k])
        here = np.arange(sig["tick"][k], stop, length) if stop > sig["tick"][k] else np.zeros(0)
        ticks.append(here)
        num += [int(sig["numerator"][k])] * len(here)
        den += [int(sig["denominator"][k])] * len(here)
    ticks = np.concatenate(ticks) if ticks else np.zeros(0)
    if not len(ticks):
        ticks, num, den = np.zeros(1), [4], [4]
    last = tpb * 4 * num[-1] / den[-1]
    return np.append(ticks, ticks[-1] + last), np.array(num), np.array(den)


def bar_and_position(score, seconds):
    """Bar index (from 0) and position in the bar (quarter notes) of times in seconds: (N,), (N,)."""
    ticks = score.time_to_tick(np.asarray(seconds, dtype=np.float64))
    lines, _, _ = bar_lines(score, until=float(np.max(ticks, initial=0)) + 1)
    bar = np.clip(np.searchsorted(lines, ticks + 1e-6, side="right") - 1, 0, len(lines) - 2)
    return bar, (ticks - lines[bar]) / score.ticks_per_beat


def note_context(maps, score=None):
    """The note columns roles need (pitch, start, bar, position, track) for `AttentionMaps` ``maps``.

    Bars come from ``score`` (the `Score` of the file), else from the maps' own
    ``bar`` and ``beat`` when they carry them; tracks from the maps, else matched
    in the score.  Without either, bars are unknown (-1: the bar
    relations then have no baseline and a NaN lift) and there is one track.
    """
    N = maps.n_notes
    out = {"pitch": np.asarray(maps.pitch), "start": np.asarray(maps.start, dtype=np.float64)}
    if score is not None:
        out["bar"], out["position"] = bar_and_position(score, out["start"])
    elif getattr(maps, "bar", None) is not None and getattr(maps, "beat", None) is not None:
        out["bar"], out["position"] = np.asarray(maps.bar), np.asarray(maps.beat, dtype=np.float64)
    else:
        out["bar"], out["position"] = np.full(N, -1), np.zeros(N)
    out["track"] = _tracks(maps, score)
    out["melody"] = melody_track_notes(out["pitch"], out["track"])
    return out


def melody_track_notes(pitch, track):
    """bool (N,): the notes of the track of the highest mean pitch, when there are two tracks or more."""
    track = np.asarray(track)
    tracks = np.unique(track)
    if len(tracks) < 2:
        return np.zeros(len(track), bool)
    means = [np.mean(np.asarray(pitch)[track == t]) for t in tracks]
    return track == tracks[int(np.argmax(means))]


def _tracks(maps, score):
    if getattr(maps, "track", None) is not None:
        return np.asarray(maps.track)
    if score is None or not len(score.notes):
        return np.zeros(maps.n_notes, dtype=np.int64)
    key = lambda p, s: (int(p), int(round(float(s) * 1000)))          # noqa: E731
    track_of = {key(p, s): t for p, s, t in zip(score.notes["pitch"], score.notes["start"], score.notes["track"])}
    return np.array([track_of.get(key(p, s), 0) for p, s in zip(maps.pitch, maps.start)], dtype=np.int64)


def structure_baseline(note_of_token, n_notes, window):
    """Share of structure tokens among the tokens each note's tokens can see: (N,).

    A query token ``t`` sees tokens ``max(0, t - window + 1) .. t``; the share is
    averaged over the tokens of each note.
    """
    labels = np.asarray(note_of_token)
    T, W = labels.size, int(window or labels.size)
    cum = np.concatenate(([0], np.cumsum(labels < 0)))                  # (T + 1,)
    t = np.arange(T)
    lo = np.maximum(0, t - W + 1)
    frac = (cum[t + 1] - cum[lo]) / (t + 1 - lo)                        # (T,)
    mine = labels >= 0
    sums = np.bincount(labels[mine], weights=frac[mine], minlength=n_notes)
    return sums / np.maximum(np.bincount(labels[mine], minlength=n_notes), 1)


def maps_roles(maps, score=None, *, min_share=MIN_SHARE):
    """`head_roles` of `AttentionMaps` ``maps`` plus its table (`strongest`), as a plain dict.

    ``score`` defaults to the maps' own (``maps.score``, kept by `attention_maps`).
    """
    score = score if score is not None else getattr(maps, "score", None)
    rows = maps.note_rows if hasattr(maps, "note_rows") else dense_rows(maps.note_attention)
    roles = head_roles(rows, maps.n_layers, maps.n_heads, note_context(maps, score),
                       maps.structure_share, structure_baseline(maps.note_of_token, maps.n_notes, maps.window))
    roles["table"] = strongest(roles, min_share=min_share)
    return roles
