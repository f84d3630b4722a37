"""Measure the rhythm of the corpus: files with off-grid onsets, files whose bars slipped.

Run from the repository root:

    python scripts/check_corpus.py                 # data/ (MANIFEST.csv)
    python scripts/check_corpus.py data/pop909     # any folder with a MANIFEST.csv

Off grid: an onset that is not on the grid of sixteenths and triplets (12
positions per quarter note) counted from its bar line
(``music_attn.music.rhythm.off_grid_onsets``).  Slipped: more than a quarter of
the bar lines after the pickup fall where no note starts
(``music_attn.music.rhythm.missing_downbeats``).  Issue 23 allows at most 1%
of files off the grid.
"""

import argparse
import sys
from collections import Counter
from pathlib import Path

from music_attn.music import rhythm
from music_attn.music.midi import read_midi
from music_attn.training.data import read_manifest

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", default=str(ROOT / "data"))
    p.add_argument("--list", action="store_true", help="name the files found")
    args = p.parse_args(argv)
    rows = read_manifest(args.folder)
    files, off, slipped = Counter(), Counter(), Counter()
    named = []
    for row in rows:
        score = read_midi(Path(args.folder) / row["file"])
        files[row["collection"]] += 1
        is_off = bool(rhythm.off_grid_onsets(score).any())
        missing = rhythm.missing_downbeats(score).size / max(rhythm.bar_lines(score).size, 1)
        off[row["collection"]] += is_off
        slipped[row["collection"]] += missing > 0.25
        if is_off or missing > 0.25:
            named.append(f"  {row['file']}: {'off grid' if is_off else ''} {f'{missing:.0%} of bar lines without an onset' if missing > 0.25 else ''}")
    print(f"{'collection':<16}{'files':>7}{'off grid':>10}{'slipped':>9}")
    for c in sorted(files):
        print(f"{c:<16}{files[c]:>7}{off[c]:>10}{slipped[c]:>9}")
    total, n_off = sum(files.values()), sum(off.values())
    print(f"{'all':<16}{total:>7}{n_off:>10}{sum(slipped.values()):>9}   off grid: {n_off / max(total, 1):.2%} of files")
    if args.list:
        print("\n".join(named))
    return 0


if __name__ == "__main__":
    sys.exit(main())
