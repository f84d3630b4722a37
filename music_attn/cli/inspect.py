"""``music-attn inspect FILE.mid``: attention over the notes of a piece as HTML, PNG and JSON.

Any length; ``--bars A:B`` / ``--start S --end E`` choose a passage (read with the
music before it as context), ``--track`` keeps tracks, ``--melody`` the top voice.
Prints how well the model fits the music (NLL per token against its validation NLL).
The page, PNG and JSON are written all or none, never over the piece or the model.
"""

from pathlib import Path

from music_attn.cli._options import add_force, integer, note_dropped_drums, real


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
    p.add_argument("--start", type=real(), metavar="SECONDS", help="show the notes starting at or after this time")
    p.add_argument("--end", type=real(), metavar="SECONDS", help="show the notes starting before this time")
    p.add_argument("--track", action="append", metavar="N|NAME",
                   help="keep this track (number as in the file, from 0, or its name; a name that several "
                        "tracks share is refused with their numbers); repeatable")
    p.add_argument("--melody", action="store_true", help="keep only the top voice (highest sounding note at each onset)")
    p.add_argument("--window", type=integer(1), metavar="W", help="tokens the model sees at once (default: its max_len)")
    p.add_argument("--drums", action="store_true", help="keep drum notes (channel 10; left out by default)")
    p.add_argument("--heads", action="store_true",
                   help="print what each head does: its strongest musical relation, share and lift")
    add_force(p)
    p.set_defaults(func=_run)


def _run(args):
    from music_attn._budget import keep_freed_memory
    from music_attn._io import atomic_outputs, check_input, check_output
    from music_attn.errors import MidiError
    from music_attn.inspect.inspector import attention_maps
    from music_attn.inspect.viz import need_matplotlib, outputs_report, write_outputs
    from music_attn.music.select import parse_bars
    from music_attn.runtime.checkpoint import load_model

    keep_freed_memory()
    source = Path(args.file)
    check_input(source, what="MIDI file", error=MidiError)
    outputs, inputs = _outputs(args, source), [p for p in (source, args.model) if p]
    for path in outputs.values():                 # before the model runs, not after
        check_output(path, inputs=inputs, force=args.force)
    need_matplotlib(args.png)
    preload = None
    if args.png:                                  # matplotlib loads while the model reads the piece
        import threading
        from music_attn.inspect.viz import preload_matplotlib
        preload = threading.Thread(target=preload_matplotlib, name="music-attn-preload", daemon=True)
        preload.start()
    bars = parse_bars(args.bars) if args.bars else None
    model = load_model(args.model)
    tokenizer = model.tokenizer.with_options(include_drums=True) if args.drums and model.tokenizer else None
    maps = attention_maps(model, source, window=args.window, bars=bars, start=args.start, end=args.end,
                          tracks=args.track, melody=args.melody, tokenizer=tokenizer)
    note_dropped_drums(source, maps.score.dropped_drums if maps.score is not None else 0)
    if preload is not None:
        preload.join()                            # matplotlib is not for two threads at once
    with atomic_outputs(list(outputs.values()), inputs=inputs, force=args.force) as temps:
        size = write_outputs(maps, dict(zip(outputs, temps)))
    print(outputs_report(maps, outputs, size))
    if args.heads:
        from music_attn.inspect.roles import format_roles
        print(format_roles(maps.head_roles()["table"]))
    return 0


def _outputs(args, source):
    """kind -> path of every file to write ('html' always; 'png' and 'json' when asked)."""
    outputs = {"html": Path(args.output or f"{source.stem}_attention.html")}
    for kind in ("png", "json"):
        if getattr(args, kind):
            outputs[kind] = Path(getattr(args, kind))
    return outputs
