"""``music-attn demo``: the shipped model on a shipped melody; page, PNG, continuation, summary."""


def register(sub):
    p = sub.add_parser("demo", help="inspect a shipped melody with the shipped model and continue it (offline)")
    p.add_argument("-o", "--output", default="music_attn_demo", metavar="DIR",
                   help="where to write the files (default: ./music_attn_demo)")
    p.add_argument("--seed", type=int, default=0, help="picks the melody and seeds the sampling (default 0)")
    p.set_defaults(func=_run)


def _run(args):
    from music_attn.demo import run_demo

    run_demo(args.output, seed=args.seed)
    return 0
