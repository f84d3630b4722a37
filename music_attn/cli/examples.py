"""``music-attn examples``: list the melodies that ship with the package, or copy them here.

``music-attn examples`` lists them; ``music-attn examples --copy`` copies all of
them (or the ones named) into the current folder (``-o DIR``), so that every
command of the README's tour runs as written.  Existing files are never
replaced without ``--force``; the copies are made all or none.
"""

from pathlib import Path

__all__ = ["register"]


def register(sub):
    p = sub.add_parser("examples", help="list the shipped example melodies, or copy them into a folder",
                       description=__doc__.split("\n\n", 1)[1])
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="melodies to list or copy, by file name with or without .mid (default: all)")
    p.add_argument("--copy", action="store_true", help="copy the melodies instead of listing them")
    p.add_argument("-o", "--output", default=".", metavar="DIR", help="folder to copy into (made if missing)")
    p.add_argument("--force", action="store_true", help="replace files of the same name that differ")
    p.set_defaults(func=_run)


def _run(args):
    rows = _chosen(args.names)
    if not args.copy:
        _print_table(rows)
        return 0
    from music_attn._io import output_folder
    folder = output_folder(args.output)
    copies = _copies(rows, folder, args.force)
    output_folder(folder, create=True)
    _write(copies)
    for row, target in copies:
        print(f"copied {target}  ({row['title']})")
    unchanged = len(rows) - len(copies)
    if unchanged:
        print(f"{unchanged} already there, unchanged")
    return 0


def _chosen(names):
    """The catalogue rows of ``names`` (all when empty); MusicAttnError names an unknown one."""
    from music_attn.errors import MusicAttnError
    from music_attn.training.data import melody_catalogue

    rows = melody_catalogue()
    by_stem = {Path(r["file"]).stem: r for r in rows}
    unknown = [n for n in names if Path(n).stem not in by_stem or Path(n).suffix not in ("", ".mid")]
    if unknown:
        raise MusicAttnError(f"no shipped melody named {unknown[0]!r} (choose from: {', '.join(sorted(by_stem))})")
    return [by_stem[Path(n).stem] for n in dict.fromkeys(names)] if names else rows


def _print_table(rows):
    width, keys = max(len(r["file"]) for r in rows), max(len(r["key"]) for r in rows)
    print(f"{'file':<{width}}  {'metre':<5}  {'key':<{keys}}  title")
    for r in rows:
        print(f"{r['file']:<{width}}  {r['metre']:<5}  {r['key']:<{keys}}  {r['title']}")
    print("copy them here with: music-attn examples --copy")


def _copies(rows, folder, force):
    """(row, target) of the melodies to write: an identical file is skipped, a different one refused."""
    from music_attn.errors import OutputError

    copies = []
    for row in rows:
        target = folder / row["file"]
        if target.exists() and target.is_file() and target.read_bytes() == row["path"].read_bytes():
            continue
        if target.exists() and not force:
            raise OutputError(f"{target}: already exists and differs from the shipped melody "
                              "(nothing copied; --force replaces it)")
        copies.append((row, target))
    return copies


def _write(copies):
    from music_attn._io import atomic_outputs

    with atomic_outputs([target for _, target in copies]) as temps:
        for (row, _), tmp in zip(copies, temps):
            tmp.write_bytes(row["path"].read_bytes())
