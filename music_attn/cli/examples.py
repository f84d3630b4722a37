"""``music-attn examples``: list the melodies that ship with the package, or copy them here.

``music-attn examples`` lists them; ``music-attn examples --copy`` copies all of
them (or the ones named) into the current folder (``-o DIR``), so that every
command of the README's tour runs as written.  Existing files are never
replaced without ``--force``; the copies are made all or none.
"""


__all__ = ["register"]


def register(sub):
    p = sub.add_parser("examples", help="list the shipped example melodies, or copy them into a folder",
                       description=__doc__.split("\n\n", 1)[1])
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="melodies to list or copy, by file name with or without .mid (default: all)")
    p.add_argument("--copy", action="store_true", help="copy the melodies instead of listing them")
    p.add_argument("-o", "--output", default=".", metavar="DIR", help="folder to copy into (made if missing)")
    p.add_argument("--force", action="store_true", help="replace files of the same name that differ (read-only ones too)")
    p.set_defaults(func=_run)


def _run(args):
    from music_attn.training.data import choose_melodies, copy_melodies, melody_table
    rows = choose_melodies(args.names)
    if not args.copy:
        print(melody_table(rows))
        return 0
    from music_attn._io import output_folder
    folder = output_folder(args.output)
    copies = copy_melodies(rows, folder, force=args.force)
    for row, target in copies:
        print(f"copied {target}  ({row['title']})")
    unchanged = len(rows) - len(copies)
    if unchanged:
        print(f"{unchanged} already there, unchanged")
    return 0
