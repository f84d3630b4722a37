"""What each head of a model does, pooled over many pieces: the head-role table of docs/guide.md.

Run from the repository root:

    python scripts/head_roles.py                       # shipped model, validation split of data/
    python scripts/head_roles.py --data data --split validation --top 8
    python scripts/head_roles.py music_attn/assets/melodies/*.mid

For every piece, `AttentionMaps.head_roles` gives each head's share of attention
per musical relation and the share even attention would give; both are pooled
over pieces weighted by their number of notes, and the lift is their ratio.
Prints the clearest heads (largest lift of their strongest relation) as a
Markdown table.
"""

import argparse
import sys

import numpy as np


def pooled_roles(model, paths):
    """Note-weighted share (L, H, R) and uniform (R,) over ``paths``; also the notes counted."""
    from music_attn.errors import MusicAttnError
    from music_attn.inspect.inspector import attention_maps
    from music_attn.music.midi import read_midi

    share, uniform, notes = 0.0, 0.0, 0
    for path in paths:
        try:
            maps = attention_maps(model, path)
        except (MusicAttnError, ValueError) as err:
            print(f"skipped {path}: {err}", file=sys.stderr)
            continue
        roles = maps.head_roles(read_midi(path))
        share = share + roles["share"] * maps.n_notes
        uniform = uniform + np.nan_to_num(roles["uniform"]) * maps.n_notes
        notes += maps.n_notes
    return share / notes, uniform / notes, notes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="MIDI files (default: a split of --data)")
    parser.add_argument("--data", default="data")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--top", type=int, default=8, help="rows of the table")
    args = parser.parse_args()
    from music_attn.inspect.roles import RELATIONS, RELATION_NAMES, strongest
    from music_attn.runtime.checkpoint import load_model
    from music_attn.training.data import load_split

    paths = args.files or load_split(args.data, args.split)
    share, uniform, notes = pooled_roles(load_model(), paths)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where(uniform > 0, share / uniform, np.nan)
    table = strongest({"relations": RELATIONS, "share": share, "lift": lift})
    print(f"{len(paths)} pieces, {notes} notes\n")
    print("| layer | head | strongest relation | share | even attention | lift |")
    print("|---:|---:|---|---:|---:|---:|")
    for row in table[:args.top]:
        r = RELATIONS.index(row["relation"])
        print(f"| {row['layer']} | {row['head']} | {RELATION_NAMES[row['relation']]} | {100 * row['share']:.0f}% "
              f"| {100 * uniform[r]:.0f}% | {row['lift']:.1f}x |")


if __name__ == "__main__":
    main()
