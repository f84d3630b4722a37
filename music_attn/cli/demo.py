"""``music-attn demo``: the shipped model on a shipped melody; page, PNG, continuation, summary."""

from music_attn.cli._options import add_force, default_of, integer


def register(sub):
    from music_attn.demo import run_demo
    p = sub.add_parser("demo", help="inspect a shipped melody with the shipped model and continue it (offline)")
    p.add_argument("-o", "--output", default=default_of(run_demo, "out_dir"), metavar="DIR",
                   help="folder to write the files into (made if missing)")
    p.add_argument("--seed", type=integer(0), default=default_of(run_demo, "seed"),
                   help="picks the melody and seeds the sampling")
    add_force(p)
    p.set_defaults(func=_run)


def _run(args):
    from music_attn.demo import run_demo

    run_demo(args.output, seed=args.seed, force=args.force)
    return 0
