"""The figures of the teaching docs (docs/one_head.md, cross_attention.md, music.md).

Run from the repository root (needs matplotlib):

    python scripts/teaching_figures.py

Writes docs/one_head.png, docs/cross_attention.png and docs/sampling.png, each from the
same computation as the doc it illustrates.
"""

import sys
from pathlib import Path

import matplotlib

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))    # this checkout's package

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import music_attn as ma  # noqa: E402
from music_attn.core.attention import scaled_dot_product_attention, softmax  # noqa: E402
from music_attn.core.positional import sinusoidal  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"
MINSTREL = "the-minstrel-boy.mid"
CHORALE = Path(__file__).resolve().parent.parent / "data" / "bach" / "bwv144-6.mid"


def back(steps, C):
    """(C, C) rotation taking PE[t] to PE[t - steps] (docs/one_head.md)."""
    R = np.zeros((C, C))
    for i, f in enumerate(10000.0 ** (-np.arange(0, C, 2) / C)):
        c, s = np.cos(steps * f), np.sin(steps * f)
        R[2 * i:2 * i + 2, 2 * i:2 * i + 2] = [[c, s], [-s, c]]
    return R


def note_map(ax, weights, names, title):
    """One (N, N) attention map, query notes down, key notes across."""
    ax.imshow(weights, cmap="Greys", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("key note")
    ax.set_ylabel("query note")
    ax.set_title(title, fontsize=10)


def previous_note_head(maps):
    """(layer, head), counted from 0, of the head with the highest lift on the previous note."""
    roles = maps.head_roles()
    lift = roles["lift"][:, :, roles["relations"].index("previous")]
    return np.unravel_index(np.nanargmax(lift), lift.shape)


def one_head(model, n=24):
    path = next(p for p in ma.shipped_melodies() if p.name == MINSTREL)
    maps = ma.attention_maps(model, path, progress=False)
    layer, head = previous_note_head(maps)
    N, C = maps.n_notes, 16
    pe = sinusoidal(N, C)
    _, hand = scaled_dot_product_attention(pe @ back(1, C), pe, pe, causal=True, scale=16.0,
                                           return_weights=True)
    names = [f"{i} {name}" for i, name in enumerate(maps.note_names[:n])]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6))
    note_map(axes[0], hand[:n, :n], names, "built by hand: previous note")
    note_map(axes[1], maps.note_attention[layer, head, :n, :n], names,
             f"shipped model: layer {layer + 1}, head {head + 1} (previous note)")
    fig.suptitle("The Minstrel Boy, first 24 notes")
    fig.tight_layout()
    fig.savefig(DOCS / "one_head.png", dpi=110)
    plt.close(fig)


def cross_attention(n=20):
    notes = ma.read_midi(CHORALE).notes
    soprano, bass = notes[notes["track"] == 1], notes[notes["track"] == 4]
    q = np.full((len(bass), 1), 20.0)
    mask = soprano["start_beat"][None, :] <= bass["start_beat"][:, None]
    _, w = scaled_dot_product_attention(q, soprano["start_beat"][:, None], soprano["pitch"][:, None] * 1.0,
                                        mask=mask, scale=1.0, return_weights=True)
    s = int(np.searchsorted(soprano["start_beat"], bass["start_beat"][n - 1], "right"))
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(w[:n, :s], cmap="Greys", vmin=0, vmax=1)
    ax.set_xticks(range(s), [f"{p} @{b:g}" for p, b in zip(soprano["pitch"][:s], soprano["start_beat"][:s])],
                  rotation=90, fontsize=7)
    ax.set_yticks(range(n), [f"{p} @{b:g}" for p, b in zip(bass["pitch"][:n], bass["start_beat"][:n])], fontsize=7)
    ax.set_xlabel("soprano note (keys, values): MIDI pitch @ onset in beats")
    ax.set_ylabel("bass note (queries)")
    ax.set_title("BWV 144.6: each bass note attends to the soprano note sounding", fontsize=10)
    fig.tight_layout()
    fig.savefig(DOCS / "cross_attention.png", dpi=110)
    plt.close(fig)


def distribution(logits, temperature=1.0, top_k=None, top_p=None):
    """As in docs/music.md."""
    z = logits / temperature
    if top_k is not None:
        z = np.where(z >= np.sort(z)[-top_k], z, -np.inf)
    p = softmax(z)
    if top_p is not None:
        order = np.argsort(-p)
        before = np.cumsum(p[order]) - p[order]
        p[order[before >= top_p]] = 0
        p /= p.sum()
    return p


def sampling(model):
    tok = model.tokenizer
    path = next(p for p in ma.shipped_melodies() if p.name == MINSTREL)
    seq = tok.encode(path)
    ids = seq.ids
    cut = [t for t, token in enumerate(seq.tokens) if token == "Bar"][4] + 2    # bar 5's Position_0
    goes_on = int(tok.pitch_of(ids[cut:cut + 1])[0])
    logits = model.forward(ids[None, :cut])[0, -1].astype(np.float64)
    pitches = np.arange(60, 84)
    cols = tok.ids_from_tokens([f"Pitch_{p}" for p in pitches])
    rows = [("T = 0.7", {"temperature": 0.7}), ("T = 1.0", {}), ("T = 1.3", {"temperature": 1.3}),
            ("top-k 3", {"top_k": 3}), ("top-p 0.9", {"top_p": 0.9})]
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 8), sharex=True)
    for ax, (label, kwargs) in zip(axes, rows):
        ax.bar(pitches, distribution(logits, **kwargs)[cols], color="0.3")
        ax.set_ylim(0, 0.5)
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
    axes[-1].set_xticks(pitches, [f"{p}" for p in pitches], fontsize=7)
    axes[-1].set_xlabel(f"next pitch (MIDI); the tune goes on with {goes_on}")
    axes[0].set_title("The shipped model's next note at the start of bar 5 of The Minstrel Boy", fontsize=10)
    fig.tight_layout()
    fig.savefig(DOCS / "sampling.png", dpi=110)
    plt.close(fig)


def main():
    model = ma.load_model()
    one_head(model)
    cross_attention()
    sampling(model)
    for name in ("one_head.png", "cross_attention.png", "sampling.png"):
        print(DOCS / name)


if __name__ == "__main__":
    main()
