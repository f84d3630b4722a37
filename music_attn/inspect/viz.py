"""Attention maps out of the library: one self-contained HTML page, a PNG grid, JSON.

The page (`render_html`) works offline: its CSS and JavaScript (from
``music_attn/inspect/assets/``) are inlined and its data is embedded as JSON in a
``<script type="application/json">`` element with ``<``, ``>`` and ``&``
escaped, so no text from a MIDI file (track names, lyrics, file name) can
close the element; the script inserts every such text with ``textContent``, and
bidi controls in them are escaped (`music_attn._text.without_bidi`), so a name
cannot reverse the text around it.

To stay small (under 2 MB for a 300-note melody, a few MB for 10,000 notes)
the page stores, for every layer and head and for the mean of the heads, only
the strongest entries of each note-attention row, quantized to uint8
(weight * 255), as base64 arrays; times are integer milliseconds.  The music
around the notes (bar lines, metres, beats, key spelling, track names, a
continuation marker) comes from the file's `Score` when given; head roles from
`music_attn.inspect.roles`.  The script draws only the visible stretch of the
piano roll, so clicks stay fast on long pieces.

Shape legend: L layers, H heads, T tokens, N notes, R rows, C columns.
"""

import base64
import json
import math
from importlib import resources

import numpy as np

from music_attn._io import atomic_write
from music_attn._text import without_bidi
from music_attn.errors import MusicAttnError
from music_attn.inspect.bands import _gc_paused, _top_k_entries
from music_attn.inspect.roles import bar_lines, dense_rows, maps_roles, note_context
from music_attn.music import select
from music_attn.music.theory import drum_name, key_name, key_spelling, piece_key, spell_with, uses_flats

__all__ = ["render_html", "page_data", "render_png", "write_html", "write_json", "write_outputs", "music_context", "spell",
           "need_matplotlib", "outputs_report"]

# Raw bytes (before base64) allowed for the sparse note and token maps of one page.
_NOTE_MAP_BUDGET = 420_000
_TOKEN_MAP_BUDGET = 480_000
_BYTES_PER_ENTRY = 3          # uint16 key index + uint8 weight
_MAX_HEATMAP_TOKENS = 2560    # longer pieces have no token heatmap (its rows would be sub-pixel)
MAX_GRID_BARS_PER_NOTE = 16    # the page's bar grid: at most this many bars per note, plus
MAX_GRID_BARS_EXTRA = 64       # this many (and this many past the last onset), whatever the ticks say
MAX_BEATS_PER_BAR = 16         # beat lines are left out past this many per bar of the budget
_PATTERN_BINS = 33            # half-beat bins of the head-pattern strips: 0 .. 16 beats back


# ------------------------------------------------------------------ HTML
def render_html(maps, *, score=None):
    """The interactive page for `AttentionMaps` ``maps``, as one HTML string.

    A piano roll read as music (bar lines and numbers, beat grid, keyboard, note
    names in the key, colour by track or surprise, zoom); click a note for arcs
    to the notes it attends to (one layer and head, the mean of the heads or
    the rollout); every head at once in a layers x heads grid; the head-role
    table; playback whose arcs follow the music; a token heatmap (short pieces);
    saving the view as SVG or PNG.  ``score`` (the file's `Score`) gives the
    bars, metres, tracks and continuation marker when the maps do not carry them.
    """
    page = _asset("page.html")
    with _gc_paused():
        data = _embed_json(page_data(maps, score=score))
    parts = {"{{css}}": _asset("inspector.css"), "{{js}}": _asset("inspector.js"), "{{data}}": data}
    for key, value in parts.items():
        page = page.replace(key, value, 1)
    return page


def write_html(maps, path, *, score=None):
    """Write `render_html` to ``path`` atomically; returns the page size in bytes."""
    page = render_html(maps, score=score).encode("utf-8")
    with atomic_write(path, "wb") as f:
        f.write(page)
    return len(page)


def page_data(maps, *, score=None):
    """The JSON payload of the page: notes, the music's grid, head roles and sparse uint8 maps.

    Times are integer milliseconds and weights uint8 (``round(w * 255)``), so a
    10,000-note piece stays a few megabytes.
    """
    score = score if score is not None else getattr(maps, "score", None)
    L, H = maps.n_layers, maps.n_heads
    music = music_context(maps, score)
    rows = _rows_of(maps)
    structure = np.concatenate([maps.structure_share, maps.structure_share.mean(1, keepdims=True)], 1)
    roles = maps_roles(maps, score)
    token_attention = _token_attention(maps)
    return {
        "title": maps.name or "melody",
        "tracks": list(music["page"]["trackNames"]),          # labels of the tracks the notes are on
        "lyrics": str(maps.texts.get("lyrics", "")),
        "notice": without_bidi(maps.notice), "window": maps.window, "nTokensInFile": maps.n_tokens_in_file,
        "layers": L, "heads": H,
        "notes": _notes_payload(maps, music),
        "music": music["page"],
        "tokens": _tokens_payload(maps, token_attention is not None),
        "noteMaps": _note_maps(rows, L, H, maps.n_notes),
        "rollout": _rollout_payload(maps),
        "structure": _b64(_quantize(structure.reshape(-1))),
        "pattern": _patterns(rows, L, H, music["beat"]),
        "roles": _roles_payload(roles),
        "tokenMaps": _token_maps(token_attention) if token_attention is not None else None,
    }


def _notes_payload(maps, music):
    return {"pitch": maps.pitch.tolist(), "name": music["names"],
            "start": _ms(maps.start), "end": _ms(maps.end),
            "velocity": np.asarray(maps.velocity).tolist(), "surprise": _floats(maps.surprise, 2),
            "track": music["track"].tolist(), "bar": music["bar"].tolist(),
            "beatInBar": _floats(music["beat_in_bar"], 3), "beat": _floats(music["beat"], 3)}


def _tokens_payload(maps, with_tokens):
    if not with_tokens:
        return {"text": [], "note": [], "nll": []}
    return {"text": [str(t) for t in maps.tokens], "note": maps.note_of_token.tolist(),
            "nll": _floats(maps.token_nll, 2)}


def _token_attention(maps):
    """Dense (L, H, T, T) token attention for the heatmap, or None: long pieces, or maps keeping none."""
    if len(getattr(maps, "note_of_token", ())) > _MAX_HEATMAP_TOKENS:
        return None
    try:
        att = maps.token_attention
    except (AttributeError, MusicAttnError):             # maps that keep no token attention
        return None
    return att if att is not None and np.ndim(att) == 4 else None


def _ms(seconds):
    return np.rint(np.asarray(seconds, dtype=np.float64) * 1000).astype(np.int64).tolist()


# ---------------------------------------------------------- the music's grid
def music_context(maps, score=None):
    """Bars, beats, metres, tracks, key spelling and continuation marker of the maps' notes.

    Returns a dict: per note ``bar`` (from 0), ``position`` (quarter notes from
    the bar line), ``beat`` (quarter notes from the start), ``track`` and
    ``names`` (spelled in the key), plus ``page``: what the page draws.
    """
    notes = note_context(maps, score)
    drums = getattr(maps, "drum", None)
    key = piece_key(maps.pitch, np.asarray(maps.end) - np.asarray(maps.start), drums)   # None: drums only
    spelling = key_spelling(key or (0, "major"))
    page = {"key": key_name(key) if key else None, "flats": uses_flats(key or (0, "major")),
            "pitchNames": [spell_with(spelling, p) for p in range(128)],
            "drumNames": [drum_name(p) for p in range(128)] if drums is not None and np.any(drums) else None,
            "trackNames": _track_names(maps, score, notes["track"]),
            "marker": _continuation_ms(score), **_grid(score, maps)}
    beat = (score.time_to_tick(notes["start"]) / score.ticks_per_beat if score is not None
            else notes["start"] * 2.0)                                  # no score: 120 bpm
    bar, beat_in_bar = _bars_for_page(maps, score, notes)
    return {"bar": bar, "position": notes["position"], "beat": beat, "beat_in_bar": beat_in_bar,
            "track": _dense_ids(notes["track"]), "names": list(maps.note_names), "page": page}


def _bars_for_page(maps, score, notes):
    """Bar (from 0, -1 unknown) and beat in the bar (from 1) of every note: from the score, else
    from the maps' own ``bar`` and ``beat`` (both counted from 1)."""
    if score is None and getattr(maps, "bar", None) is not None and getattr(maps, "beat", None) is not None:
        return np.asarray(maps.bar, dtype=np.int64) - 1, np.asarray(maps.beat, dtype=np.float64)
    bar = np.asarray(notes["bar"], dtype=np.int64)
    return bar, _beat_in_bar(score, bar, notes["position"], _last_onset_tick(score, maps))


def _last_onset_tick(score, maps):
    return float(score.time_to_tick(np.max(maps.start))) if score is not None and maps.n_notes else 0.0


def _beat_in_bar(score, bar, position, until=None):
    """The beat each note starts on, counted from 1 in the bar's metre (half notes in 2/2, dotted
    quarters in 6/8); quarter notes when there is no score."""
    position = np.asarray(position, dtype=np.float64)
    if score is None:
        return 1 + position
    _, num, den = bar_lines(score, until=None if until is None else until + 1)
    b = np.clip(np.asarray(bar), 0, len(num) - 1)
    unit = np.array([_beat_ticks(score, n, d) for n, d in zip(num, den)]) / score.ticks_per_beat
    return 1 + position / unit[b]


def _grid(score, maps):
    """Bar lines (ms), their numbers and metres, and beat lines (ms); empty without a score."""
    if score is None:
        bars, first = _bars_from_notes(maps)
        return {"bars": bars, "firstBar": first, "meters": [], "beats": []}
    lines, num, den = bar_lines(score, until=_last_onset_tick(score, maps) + 1)
    budget = MAX_GRID_BARS_PER_NOTE * maps.n_notes + MAX_GRID_BARS_EXTRA
    lines, num, den = _rung_out(score, lines, num, den, maps, budget)
    beats = [np.arange(lines[b], lines[b + 1] - 1e-6, _beat_ticks(score, num[b], den[b]))
             for b in range(len(num))]
    if sum(map(len, beats)) > MAX_BEATS_PER_BAR * budget:     # metres of hundreds of beats: bar lines only
        beats = []
    meters = [[int(b), f"{num[b]}/{den[b]}"] for b in range(len(num))
              if b == 0 or (num[b], den[b]) != (num[b - 1], den[b - 1])]
    beat_ticks = np.concatenate(beats) if beats else np.zeros(0)
    return {"bars": _ms(score.tick_to_time(lines)), "firstBar": 1, "meters": meters,
            "beats": _ms(score.tick_to_time(beat_ticks))}


def _rung_out(score, lines, num, den, maps, budget):
    """The bar lines up to the end of the last note, at most ``budget`` bars, and at most
    MAX_GRID_BARS_EXTRA past the bar of the last onset (a note held for a million bars
    draws a few).  Bars past the last onset continue its metre."""
    end = float(np.max(maps.end)) if maps.n_notes else 0.0
    length = lines[-1] - lines[-2]
    need = np.searchsorted(score.tick_to_time(lines), end - 1e-9) + 1     # bars to reach the end, if present
    if need >= len(lines):                                              # the end lies past the last onset's bar
        end_tick = float(score.time_to_tick(end))
        past = int(min(np.ceil(max(end_tick - lines[-1], 0) / length), MAX_GRID_BARS_EXTRA))
        lines = np.append(lines, lines[-1] + length * np.arange(1, past + 1))
        num, den = np.append(num, np.full(past, num[-1])), np.append(den, np.full(past, den[-1]))
        need = len(lines) - 1
    keep = int(min(need, budget, len(num)))
    return lines[:keep + 1], num[:keep], den[:keep]


def _bars_from_notes(maps):
    """Bar lines (ms) and the first one's bar number, when there is no score but the notes know
    their bar and beat (from 1).

    A bar line stands at the onset of a note on beat 1 of its bar; bars with no
    such note are placed by linear interpolation between their neighbours.
    None when fewer than two bars have a note on the downbeat.
    """
    bar, beat = getattr(maps, "bar", None), getattr(maps, "beat", None)
    if bar is None or beat is None or not maps.n_notes:
        return [], 1
    bar, beat, start = np.asarray(bar), np.asarray(beat, dtype=np.float64), np.asarray(maps.start, dtype=np.float64)
    down = np.abs(beat - 1) < 1e-6
    known = np.unique(bar[down])
    if known.size < 2:
        return [], 1
    at = np.array([start[down & (bar == b)].min() for b in known])
    every = np.arange(int(bar.min()), int(bar.max()) + 2)             # every bar, and the line closing the last
    slope = (at[-1] - at[0]) / (known[-1] - known[0])
    times = np.where(every < known[0], at[0] + (every - known[0]) * slope,
                     np.where(every > known[-1], at[-1] + (every - known[-1]) * slope, np.interp(every, known, at)))
    return _ms(np.maximum(times, 0.0)), int(every[0])


def _beat_ticks(score, num, den):
    """Ticks of one beat: the denominator's unit, or three of them in compound metres (6/8, 9/8, 12/8)."""
    unit = score.ticks_per_beat * 4 / int(den)
    return 3 * unit if int(num) % 3 == 0 and int(num) > 3 and int(den) >= 8 else unit


def _track_names(maps, score, track):
    """Labels ("2 · Viola", see `select.track_label`) of the tracks in use, in track order: names
    from the score, else the file's track-name texts when there is one per track."""
    names = select.track_names(score) if score is not None else {}
    texts = [str(t) for t in maps.texts.get("tracks", [])]
    if not names and len(track) and len(texts) > int(np.max(track)):
        names = {i: t.strip() for i, t in enumerate(texts) if t.strip()}
    return [without_bidi(select.track_label(t, names.get(t))) for t in np.unique(track).tolist()]


def _dense_ids(track):
    """Track numbers -> 0, 1, 2, ... in order (the page's colour index)."""
    return np.unique(np.asarray(track), return_inverse=True)[1].reshape(-1)


def _continuation_ms(score):
    """Milliseconds of the first marker naming a continuation (``"music-attn: continuation"``), else None."""
    for row in getattr(score, "texts", ()) or ():
        tick, kind, text = row[0], row[-2], str(row[-1])
        if kind == "marker" and "continuation" in text.lower():
            return _ms([score.tick_to_time(tick)])[0]
    return None


# ------------------------------------------------------------- attention data
def _rows_of(maps):
    """``rows(layer, head)`` -> CSR note rows: the maps' own accessor, or an adapter over dense maps."""
    return maps.note_rows if hasattr(maps, "note_rows") else dense_rows(maps.note_attention)


def _note_maps(rows, L, H, N):
    """Top-k sparse note maps of every head plus the mean of the heads of each layer."""
    k = int(np.clip(_NOTE_MAP_BUDGET // max(1, L * (H + 1) * N * _BYTES_PER_ENTRY), 4, 64))
    parts = []
    for layer in range(L):
        heads = [rows(layer, head) for head in range(H)]
        parts += [_top_k_csr(*csr, N, k) for csr in heads + [_mean_rows(heads, N)]]
    return _pack([p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts], N, H + 1, N) | {"k": k}


def _mean_rows(heads, N):
    """The mean of the heads' CSR rows (each may store different keys), as CSR rows."""
    p0, k0, _ = heads[0]
    if all(np.array_equal(p, p0) and np.array_equal(k, k0) for p, k, _ in heads[1:]):
        return p0, k0, np.mean([np.asarray(w, dtype=np.float64) for _, _, w in heads], axis=0)
    code = np.concatenate([np.repeat(np.arange(N), np.diff(p)) * N + np.asarray(k, dtype=np.int64)
                           for p, k, _ in heads])                       # (sum E,) i * N + j
    pairs, where = np.unique(code, return_inverse=True)
    weights = np.bincount(where.reshape(-1), weights=np.concatenate([w for _, _, w in heads])) / len(heads)
    indptr = np.concatenate(([0], np.cumsum(np.bincount(pairs // N, minlength=N))))
    return indptr, pairs % N, weights


def _top_k_csr(indptr, keys, weights, N, k):
    """CSR rows -> counts (N,) uint8, keys, uint8 weights: the ``k`` largest of each row, largest first."""
    row = np.repeat(np.arange(N), np.diff(indptr))                      # (E,)
    w = np.clip(np.asarray(weights, dtype=np.float64), 0, 1)
    take = _top_k_entries(0.5 * (1 - w), indptr, k)                     # by row, then weight down
    q = _quantize(np.asarray(weights)[take])
    take, q = take[q > 0], q[q > 0]
    return np.bincount(row[take], minlength=N).astype(np.uint8), np.asarray(keys)[take], q


def _patterns(rows, L, H, beat):
    """Each head's mean attention by distance back in beats (quarter notes): (L, H + 1, B) uint8, half-beat bins.

    Bin b holds the mean, over query notes, of the attention to notes
    ``b / 2 .. (b + 1) / 2`` beats earlier (bin 0: the same onset, itself
    included); scaled so that each head's largest bin is 255.
    """
    N = len(beat)
    out = np.zeros((L, H + 1, _PATTERN_BINS))
    stored = None                                                       # the keys the bins below are for
    for layer in range(L):
        for head in range(H):
            indptr, keys, w = rows(layer, head)
            if stored is None or not (np.array_equal(indptr, stored[0]) and np.array_equal(keys, stored[1])):
                qi = np.repeat(np.arange(N), np.diff(indptr))
                back = np.floor((beat[qi] - beat[np.asarray(keys)]) * 2 + 1e-6).astype(np.int64)
                ok = np.flatnonzero((back >= 0) & (back < _PATTERN_BINS))
                stored, bins = (indptr, keys), back[ok]
            out[layer, head] = np.bincount(bins, weights=np.asarray(w)[ok], minlength=_PATTERN_BINS) / max(N, 1)
        out[layer, H] = out[layer, :H].mean(0)
    scaled = out / np.maximum(out.max(-1, keepdims=True), 1e-12)
    return {"bins": _PATTERN_BINS, "perBeat": 2, "value": _b64(_quantize(scaled.reshape(-1)))}


def _rollout_payload(maps):
    """Attention rollout over notes when the maps carry it (``note_rows("rollout")``), else None."""
    if getattr(maps, "rollout", None) is None or not hasattr(maps, "note_rows"):
        return None
    N = maps.n_notes
    csr = maps.note_rows("rollout")
    k = int(np.clip(_NOTE_MAP_BUDGET // max(1, 8 * N * _BYTES_PER_ENTRY), 4, 64))
    counts, index, value = _top_k_csr(*csr, N, k)
    return _pack([counts], [index], [value], N, 1, N)


def _roles_payload(roles):
    return {"relations": list(roles["relations"]), "share": _floats(roles["share"].reshape(-1), 3),
            "uniform": _floats(roles["uniform"], 3), "lift": _floats(roles["lift"].reshape(-1), 2),
            "table": [{**row, "share": round(row["share"], 3), "lift": round(row["lift"], 2)}
                      for row in roles["table"]]}


def _token_maps(token_attention):
    """Sparse token maps of every head plus the mean of heads, one (T, T) block at a time."""
    L, H, T, _ = token_attention.shape
    k = _budget_k(np.empty((L, H + 1, T, 0)), _TOKEN_MAP_BUDGET, 3)
    blocks = []
    for layer in range(L):
        mean = token_attention[layer].mean(0, dtype=np.float64)
        blocks += [token_attention[layer, h] for h in range(H)] + [mean]
    parts = [_top_k_rows(np.asarray(b, dtype=np.float64), k) for b in blocks]
    return _pack([p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts], T, H + 1, T)


def _budget_k(stack, budget, k_min):
    """Entries kept per row so that all rows of ``stack`` (..., R, C) fit in ``budget`` bytes."""
    rows = int(np.prod(stack.shape[:-1]))
    return int(np.clip(budget // max(1, rows * _BYTES_PER_ENTRY), k_min, 255))


def encode_sparse(stack, k):
    """Keep the ``k`` largest entries of every row of ``stack`` (L, H, R, C), uint8-quantized.

    Returns a dict with base64 ``counts`` (uint8, one per row, rows in (L, H, R)
    order), ``index`` (uint16 or uint32 column of each kept entry) and
    ``value`` (uint8, ``round(weight * 255)``); entries that quantize to 0 are
    dropped and each row's entries are sorted by decreasing weight.
    """
    L, H, R, C = stack.shape
    parts = [_top_k_rows(stack[layer, head], k) for layer in range(L) for head in range(H)]
    return _pack([p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts], R, H, C)


def _top_k_rows(rows, k):
    """rows (R, C) -> counts (R,) uint8, index (nnz,), value (nnz,) uint8, largest first per row."""
    R, C = rows.shape
    k = min(k, C)
    if k == 0 or R == 0:
        return np.zeros(R, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.uint8)
    part = np.argpartition(-rows, k - 1, axis=1)[:, :k]                  # (R, k)
    w = np.take_along_axis(rows, part, 1)
    order = np.argsort(-w, axis=1, kind="stable")
    part, w = np.take_along_axis(part, order, 1), np.take_along_axis(w, order, 1)
    q = _quantize(w)
    keep = q > 0                                                          # a prefix of each row
    return keep.sum(1).astype(np.uint8), part[keep], q[keep]


def _pack(counts, index, value, rows, heads, cols):
    dtype = "<u2" if cols <= 0xFFFF else "<u4"
    return {"rows": rows, "heads": heads, "indexBytes": np.dtype(dtype).itemsize,
            "counts": _b64(np.concatenate(counts)),
            "index": _b64(np.concatenate(index).astype(dtype)),
            "value": _b64(np.concatenate(value))}


def _quantize(w):
    return np.clip(np.rint(np.asarray(w, dtype=np.float64) * 255), 0, 255).astype(np.uint8)


def _b64(a):
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _floats(a, decimals):
    return [round(x, decimals) if math.isfinite(x) else None for x in np.asarray(a, dtype=np.float64).tolist()]


def _embed_json(data):
    """JSON safe inside a <script> element: no raw '<', '>' or '&' can appear."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _asset(name):
    return resources.files("music_attn").joinpath("inspect", "assets", name).read_text(encoding="utf-8")


# ------------------------------------------------------------------- PNG
def render_png(maps, path, *, max_labels=12, max_cells=400):
    """Write a grid of per-head note-attention heatmaps (rows: layers, columns: heads) to ``path``.

    Needs matplotlib (the ``plot`` extra); raises `MusicAttnError` when it is missing.
    A piece of at most ``max_cells`` notes is drawn note by note, note names on the
    axes; a longer one bar by bar (runs of whole bars when there are more than
    ``max_cells`` bars, equal runs of notes when the metre is unknown), bar numbers
    on the axes: cell (i, j) is the mean over the query notes of run i of their summed
    weight on run j (`note_image`).  The images come straight from the sparse note
    rows, and only the outer axes carry at most ``max_labels`` labels each, so the
    cost stays a small part of the page's at any length.
    """
    Figure, FigureCanvasAgg = _matplotlib()
    L, H, N = maps.n_layers, maps.n_heads, maps.n_notes
    if N == 0:
        raise ValueError(f"{maps.name or 'melody'}: no notes to plot")
    run, ticks, labels, unit = _png_runs(maps, max_cells, max_labels)
    bins = int(run.max()) + 1
    rows = [[maps.note_rows(layer, head) for head in range(H)] for layer in range(L)]
    back = max(int(np.max(_distances(r, run), initial=0)) for layer in rows for r in layer) + 1
    band = 4 * back < bins                  # the model's window spans a few cells: draw distance back
    images = np.array([[_run_image(r, run, bins, back if band else None) for r in layer]
                       for layer in rows])                                     # (L, H, bins, bins or back)
    vmax = float(np.percentile(images, 99.5)) or 1.0
    panel = 2.6
    fig = Figure(figsize=(panel * H + 0.9, panel * L + 0.9))
    FigureCanvasAgg(fig)
    axes = fig.subplots(L, H, squeeze=False)         # same extents; ticks only on the outer panels
    fig.subplots_adjust(left=0.9 / (panel * H + 0.9), right=0.99, bottom=0.75 / (panel * L + 0.9),
                        top=1 - 0.6 / (panel * L + 0.9), wspace=0.08, hspace=0.25)
    for layer, head in np.ndindex(L, H):
        ax = axes[layer, head]
        ax.imshow(images[layer, head], cmap="magma_r", vmin=0, vmax=vmax, interpolation="nearest",
                  aspect="auto")
        ax.set_title(f"layer {layer + 1} head {head + 1}", fontsize=8, pad=2, y=1.0)   # y: no auto-placement pass
        ax.tick_params(labelsize=6, length=2, pad=1)
        if layer < L - 1:
            ax.set_xticks([])
        elif band:
            ax.set_xticks(np.arange(0, back, _nice_step(-(-back // max_labels))))
        else:
            ax.set_xticks(ticks, labels, rotation=90)
        if head:
            ax.set_yticks([])
        else:
            ax.set_yticks(ticks, labels)
    fig.supxlabel(f"key: {unit} back from the query" if band else f"key ({unit})", fontsize=8)
    fig.supylabel(f"query ({unit})", fontsize=8)
    what = f"attention by {unit} back" if band else f"attention between {unit} (query row -> key column)"
    fig.suptitle(f"{maps.name or 'melody'}: {what}", fontsize=9)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)


def _png_runs(maps, max_cells, max_labels):
    """How the PNG groups notes: (run (N,) of each note from 0, tick cells, tick labels, unit name)."""
    N = maps.n_notes
    if N <= max_cells:
        run = np.arange(N)
        step = max(1, -(-N // max_labels))
        ticks = np.arange(0, N, step)
        return run, ticks, [maps.note_names[int(t)] for t in ticks], "notes"
    bar = getattr(maps, "bar", None)
    if bar is None:
        run = np.floor(np.arange(N) * max_cells / N).astype(np.int64)       # equal runs of notes
        first = np.searchsorted(run, np.arange(max_cells))
        step = max(1, -(-max_cells // max_labels))
        ticks = np.arange(0, max_cells, step)
        return run, ticks, [f"note {int(first[t]) + 1}" for t in ticks], "runs of notes"
    bar = np.asarray(bar, np.int64)
    first, n_bars = int(bar.min()), int(bar.max() - bar.min()) + 1
    per_cell = -(-n_bars // max_cells)                                     # bars per cell
    run = (bar - first) // per_cell
    step = _nice_step(-(-(int(run.max()) + 1) // max_labels))
    ticks = np.arange(0, int(run.max()) + 1, step)
    unit = "bars" if per_cell == 1 else f"runs of {per_cell} bars"
    return run, ticks, [str(first + int(t) * per_cell) for t in ticks], unit


def _nice_step(step):
    """The smallest of 1, 2, 5, 10, 20, 50, ... at least ``step``."""
    nice = 1
    while nice < step:
        nice = nice * 5 // 2 if str(nice)[0] == "2" else nice * 2
    return nice


def note_image(maps, layer, head, bins):
    """(bins, bins) picture of one head's note attention: notes cut into ``bins`` equal runs;
    cell (i, j) is the mean over the query notes of run i of their summed weight on run j.
    With ``bins == n_notes`` it is the note attention itself."""
    N = maps.n_notes
    edges = np.linspace(0, N, bins + 1)
    run = np.searchsorted(edges, np.arange(N), side="right") - 1             # (N,) run of each note
    return _run_image(maps.note_rows(layer, head), run, bins)


def _distances(rows, run):
    """Runs back from each entry's query note to its key note: (nnz,)."""
    return run[np.repeat(np.arange(run.size), np.diff(rows.indptr))] - run[rows.keys]


def _run_image(rows, run, bins, back=None):
    """(bins, bins): cell (i, j) the mean over the query notes of run i of their summed
    weight on the notes of run j (``run`` (N,) the run of each note).  With ``back``:
    (bins, back), cell (i, d) their weight on the notes d runs earlier (later keys left out)."""
    query = np.repeat(np.arange(run.size), np.diff(rows.indptr))              # (nnz,)
    weights = np.asarray(rows.weights, np.float64)
    if back is None:
        col, width = run[rows.keys], bins
    else:
        col, width = run[query] - run[rows.keys], back
        keep = col >= 0
        query, col, weights = query[keep], col[keep], weights[keep]
    cells = np.bincount(run[query] * width + col, weights, bins * width).reshape(bins, width)
    return cells / np.maximum(np.bincount(run, minlength=bins), 1)[:, None]


def preload_matplotlib():
    """Import what `render_png` needs and draw a little (fonts, colour maps), in a thread while the
    model runs (join it before drawing: matplotlib is not for two threads at once); nothing when
    matplotlib is missing."""
    try:
        Figure, FigureCanvasAgg = _matplotlib()
    except MusicAttnError:
        return
    fig = Figure(figsize=(1, 1))                  # and load the fonts and colour maps: draw a little
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.imshow(np.zeros((2, 2)), cmap="magma_r")
    ax.set_title("x", fontsize=8)
    fig.canvas.draw()


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MusicAttnError("PNG output needs matplotlib: pip install 'music_attn[plot]'") from None
    return Figure, FigureCanvasAgg


# ------------------------------------------------------------------ JSON
_TABLE_DECIMALS = 4            # tables of 10**decimals + 1 texts up to this many decimals


def _note_dicts(maps, decimals):
    """One dict per note (`AttentionMaps.to_dict`), built column by column: ints, rounded floats
    (None for NaN/inf)."""
    none = [None] * maps.n_notes
    pitch, bar, track, velocity = (none if a is None else np.asarray(a).astype(np.int64).tolist()
                                   for a in (maps.pitch, maps.bar, maps.track, maps.velocity))
    start, end, beat, surprise = (none if a is None else [round(x, decimals) if math.isfinite(x) else None
                                                          for x in np.asarray(a, np.float64).tolist()]
                                  for a in (maps.start, maps.end, maps.beat, maps.surprise))
    columns = zip(pitch, maps.note_names, start, end, bar, beat, track, np.asarray(maps.drum).astype(bool).tolist(),
                  velocity, surprise)
    return [{"pitch": p, "name": n, "start": s, "end": e, "bar": b, "beat": t, "track": k, "drum": d, "velocity": v,
             "surprise": x} for p, n, s, e, b, t, k, d, v, x in columns]


def _sparse_json(maps, k, decimals):
    """The text ``json.dumps(maps._sparse_dict(k, decimals), separators=(",", ":"))``, written
    straight from the arrays (most of `AttentionMaps.to_json` is this note attention): each
    number's text comes from a table of the texts of ``i / 10**decimals`` (what ``repr``
    gives the rounded float, as ``json.dumps`` writes it), rows are joined in one pass, and
    numbers outside the table (NaN, inf, negatives, past 1) take ``repr`` or ``null``."""
    if not 0 <= decimals <= _TABLE_DECIMALS or int(decimals) != decimals:
        return json.dumps(maps._sparse_dict(k, decimals), separators=(",", ":"), allow_nan=False)
    ints = np.array([str(i) for i in range(maps.n_notes)], dtype=object)          # key note -> its text
    layers = ",".join("[" + ",".join(_head_json(maps, layer, head, k, int(decimals), ints)
                                     for head in range(maps.n_heads)) + "]" for layer in range(maps.n_layers))
    rollout = "null" if maps.rollout is None else _head_json(maps, "rollout", None, k, int(decimals), ints)
    return f'{{"top_k":{int(k)},"layers":[{layers}],"rollout":{rollout}}}'


def _head_json(maps, layer, head, k, decimals, ints):
    """One head's ``{"keys", "weights", "rest", "structure", "context"}`` as text."""
    indptr, keys, weights, rest = maps.top_keys(layer, head, k)
    structure, context = maps.shares(layer, head)
    flat = [",".join(_float_texts(a, decimals).tolist()) for a in (rest, structure, context)]
    return (f'{{"keys":{_rows_json(ints[np.asarray(keys, np.int64)], indptr)},'
            f'"weights":{_rows_json(_float_texts(weights, decimals), indptr)},'
            f'"rest":[{flat[0]}],"structure":[{flat[1]}],"context":[{flat[2]}]}}')


def _float_texts(values, decimals):
    """JSON text (object array (n,) of str) of each value rounded as ``np.round(values, decimals)``
    does, ``null`` for NaN and inf: the texts ``json.dumps`` writes for `inspector._floats`."""
    scale = 10.0 ** decimals
    n = np.rint(np.asarray(values, dtype=np.float64).reshape(-1) * scale)       # np.round: multiply, rint, divide
    inside = (n >= 0) & (n <= scale) & ~np.signbit(n)                             # not NaN, not -0.0
    out = _table(decimals)[np.where(inside, n, 0).astype(np.int64)]
    for i in np.flatnonzero(~inside).tolist():
        y = float(n[i] / scale)
        out[i] = repr(y) if math.isfinite(y) else "null"
    return out


_TABLES = {}


def _table(decimals):
    """The text of ``i / 10**decimals`` for i = 0 .. 10**decimals: object array."""
    if decimals not in _TABLES:
        scale = 10.0 ** decimals
        _TABLES[decimals] = np.array([repr(i / scale) for i in range(int(scale) + 1)], dtype=object)
    return _TABLES[decimals]


def _rows_json(texts, indptr):
    """``[[a,b],[],[c]]``: CSR rows of entries given as JSON texts (object array (E,)), in one join."""
    indptr = np.asarray(indptr, dtype=np.int64)
    counts = np.diff(indptr)
    R, E = counts.size, texts.size
    row = np.repeat(np.arange(R), counts)
    pieces = np.empty(2 * E + 2 * R, dtype=object)       # per row: opener, (separator, text) per entry, "]"
    start = 2 * indptr[:-1] + 2 * np.arange(R)
    pieces[start] = ",["
    pieces[start[:1]] = "["
    pieces[start + 2 * counts + 1] = "]"
    at = 2 * np.arange(E) + 2 * row + 1
    pieces[at] = ","
    pieces[at[np.arange(E) == indptr[row]]] = ""
    pieces[at + 1] = texts
    return "[" + "".join(pieces.tolist()) + "]"


def write_json(maps, path, *, top_k=8, token_band=False, decimals=3):
    """Write `AttentionMaps.to_json` atomically: notes, sparse note attention (the ``top_k`` strongest
    key notes per query note and head, the rest summed), model fit; the token band on request.
    The format is documented in ``docs/formats.md``."""
    text = maps.to_json(top_k=top_k, token_band=token_band, decimals=decimals)
    with atomic_write(path, "w") as f:
        f.write(text)


def write_outputs(maps, paths):
    """Write the page (``paths["html"]``) and, when given, the PNG and the JSON; returns the
    page's size in bytes."""
    size = write_html(maps, paths["html"])
    if "png" in paths:
        render_png(maps, paths["png"])
    if "json" in paths:
        write_json(maps, paths["json"])
    return size


def need_matplotlib(png):
    """MusicAttnError before any work when a PNG is asked for (``png`` set) and matplotlib is missing."""
    import importlib.util
    if png and importlib.util.find_spec("matplotlib") is None:
        raise MusicAttnError("--png needs matplotlib: pip install 'music_attn[plot]'")


def outputs_report(maps, outputs, size):
    """What ``inspect`` prints after `write_outputs`: the maps, their notice, the model fit (and its
    reading), and a line per file written (``outputs``: kind -> path; ``size``: the page's bytes)."""
    from music_attn.inspect.fit import fit_line
    lines = [f"{maps!r}"] + ([maps.notice] if maps.notice else []) + [fit_line(maps.model_fit)]
    if maps.model_fit.get("reading"):
        lines.append(maps.model_fit["reading"])
    lines.append(f"wrote {outputs['html']} ({size / 1e6:.2f} MB)")
    lines += [f"wrote {outputs[kind]}" for kind in ("png", "json") if kind in outputs]
    return "\n".join(lines)
