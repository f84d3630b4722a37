"""``music-attn generate``: sample a continuation of a MIDI prompt (or from nothing) to MIDI.

With ``--prompt`` the output is the prompt file as it was (every track and
message, copied) plus a track holding the continuation; see
:mod:`music_attn.music.continuation`.
"""

from music_attn.cli._options import add_force, default_of, integer, note_dropped_drums, numbered_outputs, real

BARS = 8          # what the command generates when neither --bars nor --tokens is given
MAX_BARS, MAX_TOKENS = 10_000, 1_000_000      # a bound on the time one command may take
MAX_SAMPLES = 256                             # a bound on the files one command writes


def register(sub):
    from music_attn.runtime.continue_midi import continue_midi
    p = sub.add_parser("generate",
                       help="sample a continuation of --prompt FILE.mid (or from nothing) to MIDI",
                       description="Continue a MIDI prompt with the model (the shipped one by default), "
                                   "sampling under the tokenizer's grammar, and write a MIDI file: the "
                                   "prompt file as it was (tracks, programs, names, tempo changes, metres, "
                                   "controllers) plus a track with the continuation, after a marker.")
    p.add_argument("-m", "--model", metavar="MODEL.npz", help="checkpoint (default: the shipped pretrained model)")
    p.add_argument("--prompt", metavar="FILE.mid", help="MIDI file to continue (default: start from nothing)")
    p.add_argument("--track", metavar="N|NAME",
                   help="the prompt track to continue, by number (0 = the file's first track) or name, a name "
                        "shared by several tracks being refused with their numbers "
                        "(default: the pitched track with the most notes)")
    p.add_argument("--melody", action="store_true",
                   help="continue a melody: the model reads only the top voice (highest sounding note at each "
                        "onset) of the continued track and continues it one note at a time (default: it reads "
                        "every track; a prompt it reads as one line is continued as one line)")
    p.add_argument("--prompt-bars", type=_bar_range, metavar="FIRST:LAST",
                   help="the model reads only the prompt's notes starting in these bars (from 1) and "
                        "continues at the next bar line; the output holds these bars, then the "
                        "continuation (default: the whole prompt)")
    p.add_argument("--drums", action="store_true",
                   help="let the model read the drum notes (channel 10) too (the output keeps them either way)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--bars", type=integer(1, MAX_BARS), help=f"number of bars to generate (default: {BARS})")
    budget.add_argument("--tokens", type=integer(1, MAX_TOKENS), help="number of tokens to generate (instead of --bars)")
    ending = p.add_mutually_exclusive_group()
    ending.add_argument("--no-end", action="store_true",
                        help="forbid the end-of-piece token until the bars (or tokens) are written "
                             "(the default with --prompt and --bars: the model may end only in the last bar)")
    ending.add_argument("--may-end", action="store_true",
                        help="with --prompt: let the model end the piece before the bars asked for")
    ending.add_argument("--end", action="store_true",
                        help="close on a cadence: the last bar holds the tonic of the prompt's key to its end")
    p.add_argument("--temperature", type=real(0), default=default_of(continue_midi, "temperature"),
                   help="divides the logits; 0 = greedy")
    p.add_argument("--top-k", type=integer(1), help="sample among the k most likely tokens (default: all)")
    p.add_argument("--top-p", type=real(0, 1, low_open=True), default=default_of(continue_midi, "top_p"),
                   help="sample among the smallest set of tokens with this much probability"
                        + ("" if default_of(continue_midi, "top_p") else " (default: 1)"))
    p.add_argument("--repeat", type=real(0, 1), default=default_of(continue_midi, "repeat"), metavar="P",
                   help="probability that a new bar replays an earlier bar note for note, a phrase earlier "
                        "(0: repeats are the model's alone)")
    p.add_argument("--seed", type=integer(0), default=0,
                   help="seed of the sampling (sample i of --num-samples uses seed + i)")
    p.add_argument("--num-samples", type=integer(1, MAX_SAMPLES), default=1, metavar="N",
                   help="sample N continuations at once, written to -o with {i} replaced by 0..N-1; "
                        "sample i is what a single run with --seed SEED+i writes")
    p.add_argument("--unconstrained", action="store_true", help="do not mask tokens the grammar forbids")
    p.add_argument("-o", "--output", required=True, metavar="OUT.mid",
                   help="MIDI file to write (with --num-samples, a name holding {i}, e.g. out_{i}.mid)")
    add_force(p)
    p.set_defaults(func=_run)


def _bar_range(text):
    import argparse
    from music_attn.music.select import parse_bars
    try:
        return parse_bars(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run(args):
    import numpy as np
    from music_attn._io import check_input, check_output
    from music_attn.errors import MidiError, MusicAttnError
    from music_attn.runtime.checkpoint import load_model
    if not args.prompt and (args.track is not None or args.melody or args.drums or args.prompt_bars
                            or args.end):
        raise ValueError("--track, --melody, --drums, --prompt-bars and --end shape the continuation of "
                         "--prompt: give a prompt")
    inputs = [p for p in (args.prompt, args.model) if p]
    outputs = _outputs(args)
    for path in outputs:
        check_output(path, inputs=inputs, force=args.force)  # before the sampling, not after
    if args.prompt:
        check_input(args.prompt, what="MIDI file", error=MidiError)
    model = load_model(args.model)
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise MusicAttnError(f"{args.model}: the checkpoint has no tokenizer to turn tokens into MIDI")
    if args.bars and tokenizer.bar_id is None:
        raise ValueError(f"--bars needs a tokenizer with Bar tokens (REMI); this model's is "
                         f"{tokenizer.kind}: use --tokens")
    budget = _budget(args, tokenizer)
    if args.prompt:
        return _continue(args, model, budget, outputs)
    rngs = [np.random.default_rng(args.seed + i) for i in range(args.num_samples)]
    outs = _generate(args, model, None, budget, rngs)
    return _write_fresh(args, tokenizer, outs, budget, inputs, outputs)


def _outputs(args):
    """The output paths: ``-o`` itself, or with --num-samples N its ``{i}`` filled with 0..N-1."""
    return numbered_outputs(args.output, args.num_samples)


def _budget(args, tokenizer):
    """(max_new_tokens, n_bars) for generate."""
    if args.tokens:
        return args.tokens, None
    if tokenizer.bar_id is None:
        return None, None
    return None, args.bars or BARS


def _generate(args, model, prompt_ids, budget, rngs):
    """One Generated per generator in ``rngs``, sampled as one batch."""
    from music_attn.runtime.generate import generate
    max_new_tokens, n_bars = budget
    batched = len(rngs) > 1
    outs = generate(model, prompt_ids, max_new_tokens=max_new_tokens, n_bars=n_bars, no_end=args.no_end,
                    temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    rng=rngs if batched else rngs[0], constrained=not args.unconstrained,
                    num_samples=len(rngs) if batched else None, form=_form(args, model.tokenizer))
    return outs if batched else [outs]


def _form(args, tokenizer):
    """Bar repeats from nothing: a Form for REMI tokens sampled with their grammar, else None."""
    from music_attn.runtime.form import Form
    if not args.repeat or args.unconstrained or tokenizer is None or tokenizer.bar_id is None \
            or not hasattr(tokenizer.grammar(), "one_line"):
        return None
    return Form(repeat=args.repeat)


def _write_fresh(args, tokenizer, outs, budget, inputs, outputs):
    """From nothing: the decoded tokens are the whole file (one file per sample, all or none)."""
    from music_attn._io import atomic_outputs
    from music_attn.music.midi import read_midi, write_midi
    decoded = [tokenizer.decode(out.ids) for out in outs]
    with atomic_outputs(outputs, inputs=inputs, force=args.force) as temps:
        for tmp, result in zip(temps, decoded):
            write_midi(tmp, result[0])
    for path, out, result in zip(outputs, outs, decoded):
        new = out.ids[out.prompt_length:]
        notes = read_midi(result[0], include_drums=True).notes
        print(f"wrote {path}: {len(new)} new tokens{_bars(tokenizer, out)}, {len(notes)} notes, "
              f"{notes['end'].max(initial=0):.1f} s, stopped at {out.stop}, {result.skipped} tokens skipped")
        _say_if_ended_early(out, budget)
    return 0


def _bars(tokenizer, out):
    return "" if tokenizer.bar_id is None else f" ({out.bars} bar{'s' * (out.bars != 1)})"


def _say_if_ended_early(out, budget):
    n_bars = budget[1]
    if out.stop == "eos" and n_bars is not None and out.bars < n_bars:
        print(f"the model ended the piece after {out.bars} of the {n_bars} bars asked for "
              f"(--no-end forbids ending before {n_bars} bars)")


def _continue(args, model, budget, outputs):
    """The prompt file as it was, plus the continuation on a new track: one library call."""
    from music_attn._io import atomic_outputs
    from music_attn.runtime.continue_midi import continue_midi
    n = args.num_samples
    results = continue_midi(args.prompt, model=model, bars=budget[1], tokens=budget[0],
                            prompt_bars=args.prompt_bars, track=args.track, melody=args.melody,
                            drums=args.drums, seed=args.seed, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, no_end=True if args.no_end else (False if args.may_end else None),
                            end=args.end, repeat=args.repeat,
                            constrained=not args.unconstrained,
                            num_samples=n if n > 1 else None)
    results = results if n > 1 else [results]
    with atomic_outputs(outputs, inputs=[p for p in (args.prompt, args.model) if p], force=args.force) as temps:
        for tmp, result in zip(temps, results):
            result.write(tmp)
    for path, result in zip(outputs, results):
        print(f"wrote {path}: {result.describe()}")
        print(result.reading())
        if result.added.doubled:
            print(f"left out {result.added.doubled} new note(s) that doubled a note still sounding on the same channel")
        _say_if_ended_early(result.generated, budget)
    note_dropped_drums(args.prompt, results[0].drums_left_out, kept="the output keeps them")
    return 0
