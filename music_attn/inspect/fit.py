"""How well the model fits what it read: its NLL per token against its own validation NLL."""

import math

import numpy as np

__all__ = ["FIT_RATIO", "model_fit", "fit_line"]

# A piece is "far outside what the model knows" above this multiple of its validation NLL.
FIT_RATIO = 2.0


def model_fit(model, nll, *, polyphonic=False, melody=False, tracks=None):
    """How well the model fits what it read: mean NLL per token against its validation NLL.

    Returns a dict ``nats_per_token``, ``validation_nats_per_token`` (from the
    checkpoint's ``metrics``; None when not recorded), ``ratio`` and ``reading``:
    plain words when the piece is more than `FIT_RATIO` times the validation NLL,
    with a hint to keep one voice when the model meets several at once.
    """
    finite = np.asarray(nll, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    mean = float(finite.mean()) if finite.size else float("nan")
    val = (getattr(model, "metrics", None) or {}).get("validation_nats_per_token")
    val = float(val) if isinstance(val, (int, float)) and math.isfinite(val) and val > 0 else None
    ratio = mean / val if val else None
    return {"nats_per_token": mean, "validation_nats_per_token": val, "ratio": ratio,
            "reading": _reading(mean, val, ratio, polyphonic and not melody and not tracks)}


def _reading(mean, val, ratio, hint_voices):
    if ratio is None or not ratio > FIT_RATIO:
        return ""
    text = (f"This music is far outside what the model knows: {mean:.2f} nats per token against "
            f"{val:.2f} on its own validation music ({ratio:.1f}x), so its attention here says more "
            f"about its confusion than about the music.")
    if hint_voices:
        text += (" The model meets several voices at once: keep one with --melody (the top voice) or "
                 "--track N (melody=True or tracks=[...] in Python).")
    return text


def _polyphonic(maps):
    """True when a fifth or more of the notes start together with another note."""
    if maps.n_notes < 2:
        return False
    same = np.isclose(np.diff(np.sort(maps.start)), 0)
    return bool(same.sum() >= 0.2 * maps.n_notes)


def fit_line(fit):
    """'model fit: 1.014 nats per token (the model's validation music: 0.607; 1.7x)'."""
    line = f"model fit: {fit['nats_per_token']:.3f} nats per token"
    if fit.get("validation_nats_per_token"):
        line += (f" (the model's validation music: {fit['validation_nats_per_token']:.3f}; "
                 f"{fit['ratio']:.1f}x)")
    return line
