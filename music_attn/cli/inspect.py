"""``music-attn inspect FILE.mid``: attention maps over a melody's notes as HTML, PNG and JSON."""

import sys
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
    p.add_argument("--drums", action="store_true", help="keep drum notes (channel 10; left out by default)")
    p.set_defaults(func=_run)


def _run(args):
    from music_attn.inspect.inspector import attention_maps
    from music_attn.training.checkpoint import load_model
    from music_attn.inspect.viz import render_png, write_html, write_json

    source = Path(args.file)
    if not source.is_file():
        raise FileNotFoundError(2, "No such file", str(source))
    model = load_model(args.model)
    tokenizer = model.tokenizer.with_options(include_drums=True) if args.drums and model.tokenizer else model.tokenizer
    seq = tokenizer.encode(source) if tokenizer is not None else source
    maps = attention_maps(model, seq, window=args.window)
    if getattr(seq, "dropped_drums", 0):
        sys.stderr.write(f"note: {source}: {seq.dropped_drums} drum notes left out (--drums keeps them)\n")
    if args.png:                      # first, so a missing matplotlib leaves no other output behind
        render_png(maps, args.png)
    html_path = args.output or f"{source.stem}_attention.html"
    size = write_html(maps, html_path)
    if args.json:
        write_json(maps, args.json)
    print(f"{maps!r}")
    if maps.notice:
        print(maps.notice)
    print(f"wrote {html_path} ({size / 1e6:.2f} MB)")
    for path in (args.png, args.json):
        if path:
            print(f"wrote {path}")
    return 0
