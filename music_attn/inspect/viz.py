"""Attention maps out of the library: one self-contained HTML page, a PNG grid, JSON.

The page (`render_html`) works offline: its CSS and JavaScript (from
``music_attn/inspect/assets/``) are inlined and its data is embedded as JSON in a
``<script type="application/json">`` element with ``<``, ``>`` and ``&``
escaped, so no text from a MIDI file (track names, lyrics, file name) can
close the element; the script inserts every such text with ``textContent``.

To stay small (under 2 MB for a 300-note melody) the page stores, for every
layer and head and for the mean of the heads, only the strongest entries of
each attention row, quantized to uint8 (weight * 255), as base64 arrays.

Shape legend: L layers, H heads, T tokens, N notes, R rows, C columns.
"""

import base64
import json
from importlib import resources

import numpy as np

from music_attn._io import atomic_write
from music_attn.errors import MusicAttnError

__all__ = ["render_html", "render_png", "write_html", "write_json"]

# Raw bytes (before base64) allowed for the sparse note and token maps of one page.
_NOTE_MAP_BUDGET = 420_000
_TOKEN_MAP_BUDGET = 480_000
_BYTES_PER_ENTRY = 3          # uint16 key index + uint8 weight


# ------------------------------------------------------------------ HTML
def render_html(maps):
    """The interactive page for `AttentionMaps` ``maps``, as one HTML string.

    Piano roll coloured by surprise; click or hover a note to draw arcs to the
    notes it attends to (one layer and head, or the mean of the heads); a
    token-level heatmap; a Web Audio play button; tooltips.
    """
    page = _asset("page.html")
    parts = {"{{css}}": _asset("inspector.css"), "{{js}}": _asset("inspector.js"),
             "{{data}}": _embed_json(page_data(maps))}
    for key, value in parts.items():
        page = page.replace(key, value, 1)
    return page


def write_html(maps, path):
    """Write `render_html` to ``path`` atomically; returns the page size in bytes."""
    page = render_html(maps).encode("utf-8")
    with atomic_write(path, "wb") as f:
        f.write(page)
    return len(page)


def page_data(maps):
    """The JSON payload of the page: notes, tokens, texts and sparse uint8 maps."""
    L, H = maps.n_layers, maps.n_heads
    with_mean = np.concatenate([maps.note_attention, maps.note_attention.mean(1, keepdims=True)], 1)
    structure = np.concatenate([maps.structure_share, maps.structure_share.mean(1, keepdims=True)], 1)
    return {
        "title": maps.name or "melody",
        "tracks": [str(t) for t in maps.texts.get("tracks", [])],
        "lyrics": str(maps.texts.get("lyrics", "")),
        "notice": maps.notice, "window": maps.window, "nTokensInFile": maps.n_tokens_in_file,
        "layers": L, "heads": H,
        "notes": _notes_payload(maps),
        "tokens": {"text": [str(t) for t in maps.tokens], "note": maps.note_of_token.tolist(),
                   "nll": _floats(maps.token_nll, 2)},
        "noteMaps": encode_sparse(with_mean, _budget_k(with_mean, _NOTE_MAP_BUDGET, 4)),
        "structure": _b64(_quantize(structure.reshape(-1))),
        "tokenMaps": _token_maps(maps.token_attention),
    }


def _notes_payload(maps):
    return {"pitch": maps.pitch.tolist(), "name": list(maps.note_names),
            "start": _floats(maps.start, 3), "end": _floats(maps.end, 3),
            "velocity": maps.velocity.tolist(), "surprise": _floats(maps.surprise, 3)}


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
    return [None if not np.isfinite(x) else round(float(x), decimals) for x in np.asarray(a)]


def _embed_json(data):
    """JSON safe inside a <script> element: no raw '<', '>' or '&' can appear."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _asset(name):
    return resources.files("music_attn").joinpath("inspect", "assets", name).read_text(encoding="utf-8")


# ------------------------------------------------------------------- PNG
def render_png(maps, path, *, max_labels=48):
    """Write a grid of per-head note-attention heatmaps (rows: layers, columns: heads) to ``path``.

    Needs matplotlib (the ``plot`` extra); raises `MusicAttnError` when it is missing.
    Note names label the axes (every n-th note when there are more than ``max_labels``).
    """
    Figure, FigureCanvasAgg = _matplotlib()
    L, H, N = maps.n_layers, maps.n_heads, maps.n_notes
    if N == 0:
        raise ValueError(f"{maps.name or 'melody'}: no notes to plot")
    size = 2.2 + 0.03 * min(N, 120)
    fig = Figure(figsize=(size * H, size * L + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(L, H, squeeze=False))
    step = max(1, -(-N // max_labels))
    vmax = float(np.percentile(maps.note_attention, 99.5)) or 1.0
    for layer in range(L):
        for head in range(H):
            _heatmap(axes[layer, head], maps, layer, head, step, vmax)
    fig.suptitle(f"{maps.name or 'melody'}: attention between notes (query row -> key column)")
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)


def _heatmap(ax, maps, layer, head, step, vmax):
    ax.imshow(maps.note_attention[layer, head], cmap="magma_r", vmin=0, vmax=vmax,
              interpolation="nearest")
    ticks = np.arange(0, maps.n_notes, step)
    labels = [maps.note_names[i] for i in ticks]
    fontsize = 7 if step > 1 or maps.n_notes > 24 else 8
    ax.set_xticks(ticks, labels, rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, labels, fontsize=fontsize)
    ax.set_title(f"layer {layer + 1} head {head + 1}", fontsize=9)


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MusicAttnError("PNG output needs matplotlib: pip install 'music_attn[plot]'") from None
    return Figure, FigureCanvasAgg


# ------------------------------------------------------------------ JSON
def write_json(maps, path, *, top_k=8, token_band=False, decimals=3):
    """Write `AttentionMaps.to_json` atomically: notes, sparse note attention (the ``top_k`` strongest
    key notes per query note and head, the rest summed), model fit; the token band on request.
    The format is documented in ``docs/formats.md``."""
    text = maps.to_json(top_k=top_k, token_band=token_band, decimals=decimals)
    with atomic_write(path, "w") as f:
        f.write(text)
