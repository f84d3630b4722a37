"""Judge the harmonizer as a chorale teacher would, against Bach's own voices.

Run from the repository root:

    python scripts/harmonize_eval.py --data ../shared/data/jsb              # validation chorales
    python scripts/harmonize_eval.py --data ../shared/data/jsb --folk 12    # and folk tunes

For every held-out validation chorale (the second half: the harmonizer trained on the
first 38, see scripts/train_harmonizer.py), Bach's soprano is given and the harmonizer samples
alto, tenor and bass (one sample, seed = the chorale's index), with the voice-leading
rules (the default of ``harmonize``) and without them (``--free``).  The table gives,
for both and for Bach's own voices, the figures of :mod:`music_attn.music.voice_leading`:
parallel fifths and octaves per 100 voice-pair moves, hidden octaves, crossing and
complete chords, and the harmonization NLL of Bach's voices (the raw model).

``--folk N`` also harmonizes the first N tunes of the shipped corpus folders
(data/oneills1850, data/ryansMammoth: other metres, pickups, notes outside the
chorale range) through the whole ``harmonize`` path, and reports the same figures.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from music_attn.music.voice_leading import COUNTS, VoiceLeading, voice_leading
from music_attn.runtime.keys import KEYS
from music_attn.runtime.harmonize import (CANDIDATES, TEMPERATURE, best_voicing, harmonization_nll, harmonize,
                                          load_harmonizer, sample_voices)

ROOT = Path(__file__).resolve().parent.parent


def _total(reports):
    counts = dict.fromkeys(COUNTS, 0)
    for r in reports:
        for k in COUNTS:
            counts[k] += r.counts[k]
    return VoiceLeading(counts)


def _row(name, report, nll=""):
    return (f"| {name} | {report.parallels_per_100:.2f} | {report.hidden_per_100:.2f} | "
            f"{100 * report.share('crossing'):.1f}% | {100 * report.share('spacing'):.1f}% | "
            f"{100 * report.complete_share:.1f}% | {nll} |")


def chorales(model, folder, temperature, first=38, limit=None, candidates=None, keys=KEYS):
    grids = [np.asarray(c, dtype=np.int64).reshape(-1, 4) for c in json.loads((Path(folder) / "valid.json").read_text())]
    grids = grids[first:][:limit]
    bach, ruled, free = [], [], []
    t0 = time.perf_counter()
    for i, g in enumerate(grids):
        bach.append(voice_leading(g))
        for rules, out in ((True, ruled), (False, free)):
            k = (candidates or CANDIDATES) if rules else 1
            rngs = [np.random.default_rng([i, c]) for c in range(k)]
            sampled, logp = sample_voices(model, g[:, 0], rng=rngs, temperature=temperature, rules=rules,
                                          keys=keys)
            out.append(voice_leading(sampled[best_voicing(sampled, logp)]))
    seconds = time.perf_counter() - t0
    nll = {}
    for k in sorted({keys, 1}):
        total, cells = 0.0, 0
        for g in grids:
            s, n = harmonization_nll(g, model=model, keys=k, total=True)
            total, cells = total + s, cells + n
        nll[k] = total / cells
    print(f"{len(grids)} held-out validation chorales (valid[{first}:]), Bach's soprano given; {seconds:.0f} s "
          f"for {2 * len(grids)} harmonizations; temperature {temperature}, best of "
          f"{candidates or CANDIDATES} with the rules; the model reads {keys} key{'s' * (keys > 1)}\n")
    print("| voices | parallel 5ths+8ves per 100 pair moves | hidden 8ves per 100 | crossing (steps) | "
          "spacing > 8ve (steps) | complete triads or 7ths | NLL of Bach's A, T, B (nats/cell) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(_row("Bach", _total(bach)))
    print(_row("harmonizer, with rules (default)", _total(ruled)))
    print(_row("harmonizer, --free (model alone)", _total(free), f"{nll[keys]:.4f}"))
    print("\nNLL of Bach's A, T, B by the number of keys read: "
          + ", ".join(f"{k} key{'s' * (k > 1)} {v:.4f}" for k, v in nll.items()))


def folk(model, n, temperature, keys=KEYS):
    files = sorted((ROOT / "data" / "oneills1850").glob("*.mid"))[: (n + 1) // 2] + \
        sorted((ROOT / "data" / "ryansMammoth").glob("*.mid"))[: n // 2]
    reports, notes, moved, off = [], [], 0, 0
    t0 = time.perf_counter()
    for i, path in enumerate(files):
        h = harmonize(path, model=model, seed=i, temperature=temperature, keys=keys)
        reports.append(h.voice_leading)
        moved += any("moved" in m for m in h.messages)
        off += any("off the sixteenth" in m for m in h.messages)
    print(f"\n{len(files)} folk tunes (data/oneills1850, data/ryansMammoth) through harmonize(); "
          f"{time.perf_counter() - t0:.0f} s; {moved} moved by octaves for the model, {off} with notes "
          "off the sixteenth grid\n")
    print("| voices | parallel 5ths+8ves per 100 pair moves | hidden 8ves per 100 | crossing (steps) | "
          "spacing > 8ve (steps) | complete triads or 7ths | |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(_row("harmonizer on folk tunes, with rules", _total(reports)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder with valid.json")
    p.add_argument("-m", "--model", help="harmonizer checkpoint (default: the shipped one)")
    p.add_argument("--temperature", type=float, default=TEMPERATURE)
    p.add_argument("--first", type=int, default=38, help="the first validation chorale scored (default: "
                   "38, the held-out half)")
    p.add_argument("--limit", type=int, help="only N chorales")
    p.add_argument("--candidates", type=int, help=f"voicings per harmonization with the rules (default {CANDIDATES})")
    p.add_argument("--keys", type=int, default=KEYS, help=f"keys the model reads (default {KEYS}; 1: the written key)")
    p.add_argument("--folk", type=int, default=0, metavar="N", help="also N folk tunes")
    args = p.parse_args(argv)
    model = load_harmonizer(args.model)
    chorales(model, args.data, args.temperature, args.first, args.limit, args.candidates, args.keys)
    if args.folk:
        folk(model, args.folk, args.temperature, args.keys)
    return 0


if __name__ == "__main__":
    sys.exit(main())
