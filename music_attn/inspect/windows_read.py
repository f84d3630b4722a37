"""Reading a piece through the model window by window: the band, rollout band and token NLL.

The part of :func:`music_attn.inspect.inspector.attention_maps` that runs the model.
The windows of the whole piece (:func:`music_attn.runtime.windows.spans`) that a
passage [a, b) needs are read (`_plan`), several of equal length per model call,
the calls shared out to the cores (`_run_windows`); each window writes only the rows
it owns into the band layout (``band[l, h, t, j]`` is query ``t``'s weight on key
``t - (W - 1) + j``).  `_run_windows_one_by_one` is the readable reference it equals.

Shape legend: L layers, H heads, T tokens of the passage, W band width (window), V vocab.
"""

import numpy as np

from music_attn.errors import MusicAttnError
from music_attn.inspect.bands import attention_rollout
from music_attn.core.model import parallel_map
from music_attn.runtime.windows import alignment, spans, token_nll
from music_attn.runtime.harmonize import condition_for_ids

# Windows read per model call: products of 8 x 256 rows run near the machine's matmul
# rate, and a call's attention (L x 8 x H x 256 x 256 float32) stays near 34 MB.
_WINDOWS_PER_CALL = 8
_CALL_BYTES = 64 * 2**20        # attention of one call's windows, at most (1 window of 1,024 tokens x 16 heads)


def _plan(n, window, a, b, align=1):
    """The windows of the whole piece (`spans`) whose outputs the passage [a, b) needs."""
    return [s for s in spans(n, window, align=align) if s.stop > max(a - 1, 0) and s.keep < b]


def _run_windows(model, ids, window, a, b, bar):
    """Band (L, H, T, W), rollout band (T, W) and token NLL (T,) of tokens a..b-1.

    The windows of `_plan` go ``_WINDOWS_PER_CALL`` at a time through one model call
    (products of thousands of rows rather than 256), and the calls are shared out to
    the cores with BLAS single-threaded (`parallel_map`); each call writes the rows
    its windows own.  Equal to `_run_windows_one_by_one`, the readable reference.
    """
    T, W, c = b - a, window, model.config
    band = np.zeros((c.n_layers, c.n_heads, T, W), np.float32)
    roll, nll = np.zeros((T, W), np.float32), np.full(T, np.nan)
    cond = condition_for_ids(model, ids)           # the harmonizer reads the melody ahead; else None

    def read(batch):
        condition = None if cond is None else np.stack([cond[s.start:s.stop] for s in batch])
        logits, att = model.forward(np.stack([ids[s.start:s.stop] for s in batch]), condition=condition,
                                    return_attention=True)                 # (B, n, V), (L, B, H, n, n)
        owned = [_owned(s, a, b) for s in batch]
        first = min(int(q[0]) for q in owned)
        rolled = attention_rollout(att, rows=np.arange(first, att.shape[-1]))   # (B, n - first, n)
        for i, (s, q) in enumerate(zip(batch, owned)):
            _put_rows(band, att[:, i], q, s.start - a, W)
            _put_rows(roll, rolled[i], q, s.start - a, W, src_first=first)
            p = np.arange(max(s.keep, a - 1, 0), min(s.stop, b - 1))        # positions predicting p + 1
            nll[p + 1 - a] = token_nll(logits[i, p - s.start], ids[p + 1])
        bar is not None and bar.update(len(batch))

    parallel_map(read, _batches(_plan(ids.size, window, a, b, alignment(model)), _windows_per_call(model, W)))
    return band, roll, nll


def _batches(plan, per_call=_WINDOWS_PER_CALL):
    """The windows of ``plan`` in runs of equal length, at most ``_WINDOWS_PER_CALL`` to a run."""
    out = []
    for s in plan:
        last = out[-1] if out else None
        if last and len(last) < per_call and last[0].stop - last[0].start == s.stop - s.start:
            last.append(s)
        else:
            out.append([s])
    return out


def _owned(s, a, b):
    """Rows of window ``s`` (indices into it) whose outputs it gives to the passage [a, b)."""
    return np.arange(max(s.keep, a), min(s.stop, b)) - s.start


def _put_rows(dst, src, rows, offset, W, src_first=0):
    """Window rows into the band layout: for each r in ``rows`` (consecutive),
    ``dst[..., offset + r, W-1-r:] = src[..., r - src_first, :r + 1]`` (keys 0..r of the window).

    ``dst`` (..., T, W) C-contiguous, zero elsewhere (keys the window did not hold); ``src`` (..., n, n).
    One masked copy through a skewed view of ``dst``: its element (i, k) is
    ``dst[..., offset + r0 + i, W-1-(r0+i) + k]``, so row i's keys 0..r0+i land where the band
    keeps them, and the mask (k <= r0 + i) leaves the rest of ``dst`` untouched.
    """
    if rows.size == 0:
        return
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    if rows.size != r1 - r0 or not dst.flags.c_contiguous:
        for r in rows.tolist():
            dst[..., offset + r, W - 1 - r:] = src[..., r - src_first, :r + 1]
        return
    item = dst.itemsize
    start = ((offset + r0) * W + (W - 1 - r0)) * item                  # byte offset of element (0, 0)
    flat = dst.reshape(dst.shape[:-2] + (-1,))
    skew = np.lib.stride_tricks.as_strided(
        flat[..., start // item:], shape=dst.shape[:-2] + (r1 - r0, r1),
        strides=dst.strides[:-2] + ((W - 1) * item, item), writeable=True)
    mask = np.arange(r1)[None, :] <= np.arange(r0, r1)[:, None]         # (rows, keys): k <= r
    np.copyto(skew, src[..., r0 - src_first:r1 - src_first, :r1], where=mask)


def _run_windows_one_by_one(model, ids, window, a, b, bar=None):
    """The reference for `_run_windows`: one window per model call, written as the rule reads."""
    T, W = b - a, window
    band, roll, nll = None, np.zeros((T, W), np.float32), np.full(T, np.nan)
    cond = condition_for_ids(model, ids)           # the harmonizer reads the melody ahead; else None
    for s in _plan(ids.size, window, a, b, alignment(model)):
        logits, att = _forward(model, ids[s.start:s.stop],
                               None if cond is None else cond[s.start:s.stop])   # (n, V), (L, H, n, n)
        if band is None:
            band = np.zeros(att.shape[:2] + (T, W), np.float32)
        q = np.arange(max(s.keep, a), min(s.stop, b)) - s.start            # rows this window owns
        c = np.arange(W) - (W - 1) + q[:, None]                             # (q, W) window columns
        band[:, :, q + s.start - a] = np.where(c >= 0, att[:, :, q[:, None], np.maximum(c, 0)], 0)
        rolled = attention_rollout(att, rows=q)                            # (q, n)
        roll[q + s.start - a] = np.where(c >= 0, rolled[np.arange(q.size)[:, None], np.maximum(c, 0)], 0)
        p = np.arange(max(s.keep, a - 1, 0), min(s.stop, b - 1))           # positions predicting p + 1
        nll[p + 1 - a] = token_nll(logits[p - s.start], ids[p + 1])
        bar is not None and bar.update(1)
    return band, roll, nll


def _memory_needed(model, T, W):
    """Bytes of the attention band (L, H, T, W), the rollout and what is assembled from them, plus
    the attention of the windows in flight (two calls of `_windows_per_call` windows)."""
    L, H = model.config.n_layers, model.config.n_heads
    return 2 * 4 * T * W * (L * H + 1) + 2 * _windows_per_call(model, W) * L * H * W * W * 4


def _windows_per_call(model, W):
    """Windows per model call: up to ``_WINDOWS_PER_CALL``, fewer when their attention
    (L, B, H, W, W) float32 would pass ``_CALL_BYTES``."""
    per_window = model.config.n_layers * model.config.n_heads * W * W * 4
    return max(1, min(_WINDOWS_PER_CALL, _CALL_BYTES // per_window))


def fitting_window(model, T, W):
    """The window to read T tokens with: W, halved (down to 64 tokens, kept a multiple of the
    model's period) while the maps would pass the memory budget."""
    from music_attn._budget import memory_budget
    budget, align = memory_budget(), alignment(model)
    while W > 64 and _memory_needed(model, T, W) > budget:
        W = max(64, W // 2 // align * align)
    return W


def _check_memory(model, T, W, name):
    """Refuse a passage whose attention band (L, H, T, W) and the maps made from it would pass
    the memory budget (:mod:`music_attn._budget`), before any of it is computed."""
    from music_attn._budget import check_memory
    needed = _memory_needed(model, T, W)
    check_memory(needed, f"{name}: inspecting its {T:,} tokens",
                 "choose a passage (--bars A:B, --start/--end; bars=, start=, end= in Python) "
                 "or a smaller --window")


def _forward(model, ids, condition=None):
    with np.errstate(over="ignore", invalid="ignore"):                   # overflow: refused below
        logits, att = model.forward(ids[None, :], return_attention=True,
                                    condition=None if condition is None else condition[None])   # (1, n, V), (L, 1, H, n, n)
    logits, att = np.asarray(logits[0], dtype=np.float64), np.asarray(att[:, 0], dtype=np.float32)
    if not (np.isfinite(logits).all() and np.isfinite(att).all()):
        raise MusicAttnError("the model's scores or attention are not finite numbers (its weights overflow); "
                             "it cannot be inspected")
    return logits, att
