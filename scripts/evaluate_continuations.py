"""Measure continuations against the real ones (the table of docs/continuations.md).

Run from the repository root:

    python scripts/evaluate_continuations.py                      # the defaults, 40 songs
    python scripts/evaluate_continuations.py --grid               # temperature x top-p, 9 settings
    python scripts/evaluate_continuations.py --repeats 0,0.1,0.2  # bar-repeat probabilities
    python scripts/evaluate_continuations.py -m build/new.npz --songs 80 --grid

Protocol (``music_attn.training.continuations``): each validation folk song's
bars 1-4 are the prompt (``generate --prompt-bars 1:4 --bars 8``), 8 bars are
generated with the given sampling, and the new notes are compared with the
song's real bars 5-12: the overlap area (OA) of five features, bar repeats,
early endings, chords, notes added to the prompt's bars.
"""

import argparse
import sys
import time
from pathlib import Path

from music_attn.music.features import FEATURES
from music_attn.runtime.checkpoint import load_model
from music_attn.runtime.continue_midi import DEFAULT_REPEAT, DEFAULT_TEMPERATURE, DEFAULT_TOP_P
from music_attn.training.continuations import evaluate, validation_songs

ROOT = Path(__file__).resolve().parent.parent
SHORT = {"pitch_class_entropy": "PCE", "scale_consistency": "scale", "pitch_range": "range",
         "mean_interval": "interval", "groove_consistency": "groove"}


def settings(grid, repeats=None):
    """{name: continue_midi sampling keywords}: the defaults, temperature x top-p, or bar repeats."""
    if repeats:
        return {f"T {DEFAULT_TEMPERATURE:g}, repeat {r:g}" + (" (default)" if r == DEFAULT_REPEAT else ""):
                {"temperature": DEFAULT_TEMPERATURE, "top_p": DEFAULT_TOP_P, "repeat": r} for r in repeats}
    if not grid:
        return {f"T {DEFAULT_TEMPERATURE:g}, top-p {DEFAULT_TOP_P or 1:g}, repeat {DEFAULT_REPEAT:g} (default)":
                {"temperature": DEFAULT_TEMPERATURE, "top_p": DEFAULT_TOP_P}}
    return {f"T {t:g}, top-p {p:g}": {"temperature": t, "top_p": None if p == 1 else p, "repeat": 0.0}
            for t in (0.8, 0.9, 1.0) for p in (0.9, 0.95, 1.0)}


def table(rows):
    """A Markdown table of the summary rows."""
    head = (["sampling"] + [f"OA {SHORT[f]}" for f in FEATURES]
            + ["mean OA", "bar repeats", "early endings", "chords", "in prompt bars"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        cells = [name] + [f"{r[f]:.2f}" for f in FEATURES] + [f"**{r['mean_oa']:.3f}**"]
        cells += [f"{r['generated_repeats']:.2f} (real {r['real_repeats']:.2f})"]
        cells += [f"{r[k]:.0%}" for k in ("early", "chords", "in_prompt")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", help="checkpoint (default: the shipped model)")
    p.add_argument("--data", default=str(ROOT / "data"))
    p.add_argument("--songs", type=int, default=40, help="validation songs (default 40)")
    p.add_argument("--grid", action="store_true", help="temperature 0.8/0.9/1.0 x top-p 0.9/0.95/1.0")
    p.add_argument("--repeats", type=lambda text: [float(x) for x in text.split(",")], metavar="P,P,...",
                   help="compare these bar-repeat probabilities at the default temperature (e.g. 0,0.1,0.2)")
    p.add_argument("--seed", type=int, default=0, help="song i is sampled with seed + i")
    args = p.parse_args(argv)
    model = load_model(args.model)
    songs = validation_songs(args.data, args.songs)
    t0 = time.perf_counter()
    print(f"{len(songs)} validation songs; prompt bars 1-4, 8 bars generated", flush=True)
    rows = evaluate(songs, model, settings(args.grid, args.repeats), seed=args.seed,
                    progress=lambda name, row: print(f"  {name}: mean OA {row['mean_oa']:.3f}", flush=True))
    print(table(rows))
    print(f"({len(songs)} songs, {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
