"""How well a model fits music it never saw: NLL per token of each MIDI file, against its validation NLL.

Run from the repository root::

    python scripts/outside_fit.py FOLDER [-m MODEL.npz] [--validation NATS]

Each file of FOLDER (``*.mid``) is read whole, every track, the way ``music-attn
inspect`` reads it, in windows of the model's length moved by half a window; the
table gives its NLL per token and that NLL divided by the model's validation NLL
(from the checkpoint's metrics, or ``--validation`` to divide by another figure,
such as an earlier model's validation set).  docs/shipped_model.md has the files
used and the results.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from music_attn.runtime.checkpoint import load_model
from music_attn.runtime.windows import sequence_nll


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("-m", "--model", help="checkpoint (default: the shipped model)")
    p.add_argument("--validation", type=float, help="divide by this NLL instead of the model's own")
    args = p.parse_args(argv)
    model = load_model(args.model)
    val = args.validation or model.metrics.get("validation_nats_per_token")
    W = model.config.max_len
    ratios = []
    print(f"| file | notes | nats per token | x validation ({val:.3f}) |\n|---|---:|---:|---:|")
    for path in sorted(args.folder.glob("*.mid")):
        seq = model.tokenizer.encode(str(path))
        nll = sequence_nll(model, np.asarray(seq.ids), window=W, stride=W // 2)
        ratios.append(nll.mean() / val)
        print(f"| {path.name} | {len(seq.notes)} | {nll.mean():.3f} | {ratios[-1]:.2f}x |")
    print(f"median {np.median(ratios):.2f}x, max {max(ratios):.2f}x ({len(ratios)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
