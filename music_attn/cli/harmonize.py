"""``music-attn harmonize MELODY.mid -o OUT.mid`` and ``music-attn analyze FILE.mid``.

harmonize: alto, tenor and bass under a melody by the shipped harmonizer (the melody and
the file's tempo map, metres and key signatures kept), with the voice leading of what it
wrote.  analyze: the voice leading of a four-voice file, per bar.
"""

from pathlib import Path

from music_attn.cli._options import add_force, default_of, integer, numbered_outputs, real


def register(sub):
    from music_attn.runtime.harmonize import harmonize
    p = sub.add_parser("harmonize", help="add alto, tenor and bass under a melody (Bach chorale style)")
    p.add_argument("file", metavar="MELODY.mid", help="the melody: a one-track file, or --track of a larger one")
    p.add_argument("-o", "--output", metavar="OUT.mid", required=True,
                   help="the harmonized file (with --num-samples, a name holding {i}, e.g. out_{i}.mid)")
    p.add_argument("-m", "--model", metavar="MODEL.npz", help="harmonizer checkpoint (default: the shipped one)")
    p.add_argument("--track", metavar="N|NAME", help="the melody's track (number from 0, or name)")
    p.add_argument("--bars", metavar="A:B", help="harmonize bars A..B (counted from 1) only")
    p.add_argument("--seed", type=integer(0), default=0, help="sampling seed (sample i uses SEED+i)")
    p.add_argument("--num-samples", type=integer(1, 64), default=1, metavar="N", help="harmonizations to write")
    p.add_argument("--temperature", type=real(0, 10, low_open=True), default=default_of(harmonize, "temperature"),
                   help="divides the logits before sampling")
    p.add_argument("--free", action="store_true", help="the model alone: no voice-leading rules while sampling")
    p.add_argument("--keys", type=int, choices=range(1, 12, 2), default=default_of(harmonize, "keys"), metavar="K",
                   help="read the melody in K keys (odd, 1-11) around the written one and average the "
                        "model's predictions (default: %(default)s; 1: the written key only)")
    add_force(p)
    p.set_defaults(func=_harmonize)
    a = sub.add_parser("analyze", help="voice leading of a four-voice file, per bar: parallels, crossing, spacing")
    a.add_argument("file", metavar="FILE.mid", help="four voices: four tracks of notes, or chords of four notes")
    a.add_argument("--json", metavar="OUT.json", help="also write the counts per bar as JSON")
    add_force(a)
    a.set_defaults(func=_analyze)


def _harmonize(args):
    from music_attn._io import atomic_outputs, check_input, check_output
    from music_attn.errors import MidiError
    from music_attn.music.select import parse_bars
    from music_attn.runtime.harmonize import harmonize, load_harmonizer

    source = Path(args.file)
    check_input(source, what="MIDI file", error=MidiError)
    outputs, inputs = numbered_outputs(args.output, args.num_samples), [p for p in (source, args.model) if p]
    for path in outputs:
        check_output(path, inputs=inputs, force=args.force)
    results = harmonize(source, model=load_harmonizer(args.model), seed=args.seed, num_samples=args.num_samples,
                        track=args.track, bars=parse_bars(args.bars) if args.bars else None,
                        rules=not args.free, temperature=args.temperature, keys=args.keys)
    results = results if isinstance(results, list) else [results]
    with atomic_outputs(outputs, inputs=inputs, force=args.force) as temps:
        for result, tmp in zip(results, temps):
            result.write(tmp)
    for line in results[0].messages:
        print(f"note: {line}")
    for result, path in zip(results, outputs):
        print(f"wrote {path}: {result.describe()}")


def _analyze(args):
    from music_attn._io import atomic_write, check_input, check_output
    from music_attn.errors import MidiError
    from music_attn.runtime.harmonize import analyze_file

    source = Path(args.file)
    check_input(source, what="MIDI file", error=MidiError)
    if args.json:
        check_output(args.json, inputs=[source], force=args.force)
    report, how = analyze_file(source)
    print(f"{source}: four voices {how}; {len(report.bars)} bars\n{report.summary()}")
    if report.table():
        print(f"\n{report.table()}")
    if args.json:
        with atomic_write(args.json, "w", inputs=[source], force=args.force) as f:
            f.write(report.to_json())
        print(f"wrote {args.json}")
