"""``music-attn inspect FILE.mid``: attention maps over a melody's notes as HTML, PNG and JSON."""

from pathlib import Path


def register(sub):
    p = sub.add_parser("inspect", help="attention over the notes of a MIDI file: interactive HTML, PNG, JSON")
    p.add_argument("file", metavar="FILE.mid", help="the melody to inspect")
    p.add_argument("-m", "--model", metavar="MODEL.npz", help="checkpoint (default: the shipped model)")
    p.add_argument("-o", "--output", metavar="OUT.html",
                   help="interactive page (default: FILE_attention.html in the current folder)")
    p.add_argument("--png", metavar="OUT.png", help="also write a grid of per-head heatmaps (needs matplotlib)")
    p.add_argument("--json", metavar="OUT.json", help="also write notes, tokens and note maps as JSON")
    p.add_argument("--window", type=int, metavar="W", help="tokens the model sees at once (default: its max_len)")
    p.add_argument("--heads", action="store_true",
                   help="print what each head does: its strongest musical relation, share and lift")
    p.set_defaults(func=_run)


def _run(args):
    from music_attn.inspect.inspector import attention_maps
    from music_attn.training.checkpoint import load_model
    from music_attn.inspect.roles import format_roles
    from music_attn.inspect.viz import render_png, write_html, write_json
    from music_attn.music.midi import read_midi

    source = Path(args.file)
    if not source.is_file():
        raise FileNotFoundError(2, "No such file", str(source))
    model = load_model(args.model)
    maps = attention_maps(model, source, window=args.window)
    score = read_midi(source)
    if args.png:                      # first, so a missing matplotlib leaves no other output behind
        render_png(maps, args.png)
    html_path = args.output or f"{source.stem}_attention.html"
    size = write_html(maps, html_path, score=score)
    if args.json:
        write_json(maps, args.json)
    print(f"{maps!r}")
    if maps.notice:
        print(maps.notice)
    print(f"wrote {html_path} ({size / 1e6:.2f} MB)")
    for path in (args.png, args.json):
        if path:
            print(f"wrote {path}")
    if args.heads:
        print(format_roles(maps.head_roles(score)["table"]))
    return 0
