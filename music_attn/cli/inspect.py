"""``music-attn inspect FILE.mid``: attention over the notes of a piece as HTML, PNG and JSON.

Any length; ``--bars A:B`` / ``--start S --end E`` choose a passage (read with the
music before it as context), ``--track`` keeps tracks, ``--melody`` the top voice.
Prints how well the model fits the music (NLL per token against its validation NLL).
"""

import math
from pathlib import Path


def register(sub):
    p = sub.add_parser("inspect", help="attention over the notes of a MIDI file: interactive HTML, PNG, JSON")
    p.add_argument("file", metavar="FILE.mid", help="the piece to inspect (any length)")
    p.add_argument("-m", "--model", metavar="MODEL.npz", help="checkpoint (default: the shipped model)")
    p.add_argument("-o", "--output", metavar="OUT.html",
                   help="interactive page (default: FILE_attention.html in the current folder)")
    p.add_argument("--png", metavar="OUT.png", help="also write a grid of per-head heatmaps (needs matplotlib)")
    p.add_argument("--json", metavar="OUT.json", help="also write notes, sparse note attention and model fit as JSON "
                                                      "(docs/formats.md)")
    p.add_argument("--bars", metavar="A:B", help="show the notes starting in bars A..B (counted from 1)")
    p.add_argument("--start", type=float, metavar="SECONDS", help="show the notes starting at or after this time")
    p.add_argument("--end", type=float, metavar="SECONDS", help="show the notes starting before this time")
    p.add_argument("--track", action="append", metavar="N|NAME",
                   help="keep this track (number as in the file, from 0, or its name); repeatable")
    p.add_argument("--melody", action="store_true", help="keep only the top voice (highest sounding note at each onset)")
    p.add_argument("--window", type=int, metavar="W", help="tokens the model sees at once (default: its max_len)")
    p.set_defaults(func=_run)


def _run(args):
    from music_attn.inspect.inspector import attention_maps
    from music_attn.inspect.viz import render_png, write_html, write_json
    from music_attn.music.select import parse_bars
    from music_attn.training.checkpoint import load_model

    source = Path(args.file)
    if not source.is_file():
        raise FileNotFoundError(2, "No such file", str(source))
    bars = parse_bars(args.bars) if args.bars else None
    for value in (args.start, args.end):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"--start/--end must be finite seconds, got {value}")
    model = load_model(args.model)
    maps = attention_maps(model, source, window=args.window, bars=bars, start=args.start, end=args.end,
                          tracks=args.track, melody=args.melody)
    if args.png:                      # first, so a missing matplotlib leaves no other output behind
        render_png(maps, args.png)
    html_path = args.output or f"{source.stem}_attention.html"
    size = write_html(maps, html_path)
    if args.json:
        write_json(maps, args.json)
    _print_summary(maps, html_path, size, (args.png, args.json))
    return 0


def _print_summary(maps, html_path, size, others):
    print(f"{maps!r}")
    if maps.notice:
        print(maps.notice)
    print(_fit_line(maps.model_fit))
    if maps.model_fit.get("reading"):
        print(maps.model_fit["reading"])
    print(f"wrote {html_path} ({size / 1e6:.2f} MB)")
    for path in others:
        if path:
            print(f"wrote {path}")


def _fit_line(fit):
    line = f"model fit: {fit['nats_per_token']:.3f} nats per token"
    if fit.get("validation_nats_per_token"):
        line += (f" (the model's validation music: {fit['validation_nats_per_token']:.3f}; "
                 f"{fit['ratio']:.1f}x)")
    return line
