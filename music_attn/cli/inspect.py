"""``music-attn inspect FILE.mid``: attention maps over a melody's notes as HTML, PNG and JSON.

The page, PNG and JSON are written all or none, never over the melody or the model.
"""

from pathlib import Path

from music_attn.cli._options import integer


def register(sub):
    p = sub.add_parser("inspect", help="attention over the notes of a MIDI file: interactive HTML, PNG, JSON")
    p.add_argument("file", metavar="FILE.mid", help="the melody to inspect")
    p.add_argument("-m", "--model", metavar="MODEL.npz", help="checkpoint (default: the shipped model)")
    p.add_argument("-o", "--output", metavar="OUT.html",
                   help="interactive page (default: FILE_attention.html in the current folder)")
    p.add_argument("--png", metavar="OUT.png", help="also write a grid of per-head heatmaps (needs matplotlib)")
    p.add_argument("--json", metavar="OUT.json", help="also write notes, tokens and note maps as JSON")
    p.add_argument("--window", type=integer(1), metavar="W",
                   help="tokens the model sees at once (default: its max_len)")
    p.set_defaults(func=_run)


def _run(args):
    from music_attn._io import atomic_outputs, check_input, check_output
    from music_attn.errors import MidiError
    from music_attn.inspect.inspector import attention_maps
    from music_attn.training.checkpoint import load_model

    source = Path(args.file)
    check_input(source, what="MIDI file", error=MidiError)
    outputs, inputs = _outputs(args, source), [p for p in (source, args.model) if p]
    for path in outputs.values():                 # before the model runs, not after
        check_output(path, inputs=inputs)
    _need_matplotlib(args.png)
    model = load_model(args.model)
    maps = attention_maps(model, source, window=args.window)
    with atomic_outputs(list(outputs.values()), inputs=inputs) as temps:
        size = _write(maps, dict(zip(outputs, temps)))
    print(f"{maps!r}")
    if maps.notice:
        print(maps.notice)
    print(f"wrote {outputs['html']} ({size / 1e6:.2f} MB)")
    for kind in ("png", "json"):
        if kind in outputs:
            print(f"wrote {outputs[kind]}")
    return 0


def _outputs(args, source):
    """kind -> path of every file to write ('html' always; 'png' and 'json' when asked)."""
    outputs = {"html": Path(args.output or f"{source.stem}_attention.html")}
    for kind in ("png", "json"):
        if getattr(args, kind):
            outputs[kind] = Path(getattr(args, kind))
    return outputs


def _need_matplotlib(png):
    import importlib.util
    from music_attn.errors import MusicAttnError
    if png and importlib.util.find_spec("matplotlib") is None:
        raise MusicAttnError("--png needs matplotlib: pip install 'music_attn[plot]'")


def _write(maps, temps):
    """Write each output into its temporary path; returns the page's size in bytes."""
    from music_attn.inspect.viz import render_png, write_html, write_json

    size = write_html(maps, temps["html"])
    if "png" in temps:
        render_png(maps, temps["png"])
    if "json" in temps:
        write_json(maps, temps["json"])
    return size
