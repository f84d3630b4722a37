"""``music-attn generate``: sample a continuation of a MIDI prompt (or from nothing) to MIDI."""

import sys

from music_attn.cli._options import default_of, integer, real

BARS = 8          # what the command generates when neither --bars nor --tokens is given
MAX_BARS, MAX_TOKENS = 10_000, 1_000_000      # a bound on the time one command may take


def register(sub):
    from music_attn.training.generate import generate
    p = sub.add_parser("generate",
                       help="sample a continuation of --prompt FILE.mid (or from nothing) to MIDI",
                       description="Continue a MIDI prompt with the model (the shipped one by default), "
                                   "sampling under the tokenizer's grammar, and write a MIDI file.")
    p.add_argument("-m", "--model", metavar="MODEL.npz", help="checkpoint (default: the shipped pretrained model)")
    p.add_argument("--prompt", metavar="FILE.mid", help="MIDI file to continue (default: start from nothing)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--bars", type=integer(1, MAX_BARS), help=f"number of bars to generate (default: {BARS})")
    budget.add_argument("--tokens", type=integer(1, MAX_TOKENS), help="number of tokens to generate (instead of --bars)")
    p.add_argument("--temperature", type=real(0), default=default_of(generate, "temperature"),
                   help="divides the logits; 0 = greedy")
    p.add_argument("--top-k", type=integer(1), help="sample among the k most likely tokens (default: all)")
    p.add_argument("--top-p", type=real(0, 1, low_open=True),
                   help="sample among the smallest set of tokens with this much probability (default: 1)")
    p.add_argument("--seed", type=integer(0), default=0, help="seed of the sampling")
    p.add_argument("--unconstrained", action="store_true", help="do not mask tokens the grammar forbids")
    p.add_argument("--drums", action="store_true", help="keep the prompt's drum notes (left out by default)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.mid", help="MIDI file to write")
    p.set_defaults(func=_run)


def _run(args):
    import numpy as np
    from music_attn._io import atomic_outputs, check_input, check_output
    from music_attn.errors import MidiError, MusicAttnError
    from music_attn.music.midi import write_midi
    from music_attn.training.checkpoint import load_model
    from music_attn.training.generate import generate
    inputs = [p for p in (args.prompt, args.model) if p]
    check_output(args.output, inputs=inputs)              # before the sampling, not after
    if args.prompt:
        check_input(args.prompt, what="MIDI file", error=MidiError)
    model = load_model(args.model)
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise MusicAttnError(f"{args.model}: the checkpoint has no tokenizer to turn tokens into MIDI")
    if args.drums:
        tokenizer = tokenizer.with_options(include_drums=True)
    prompt = tokenizer.encode(args.prompt) if args.prompt else None
    if prompt is not None and prompt.dropped_drums:
        sys.stderr.write(f"note: {args.prompt}: {prompt.dropped_drums} drum notes left out (--drums keeps them)\n")
    prompt = prompt.ids if prompt is not None else None
    n_bars = None if args.tokens else (args.bars or BARS)
    out = generate(model, prompt, max_new_tokens=args.tokens, n_bars=n_bars,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   rng=np.random.default_rng(args.seed), constrained=not args.unconstrained)
    decoded = tokenizer.decode(out.ids)
    with atomic_outputs([args.output], inputs=inputs) as (tmp,):
        write_midi(tmp, decoded.score)
    new = out.ids[out.prompt_length:]
    notes = len(decoded.score)
    bars = "" if tokenizer.bar_id is None else f" ({int(np.sum(new == tokenizer.bar_id))} bars)"
    print(f"wrote {args.output}: {len(new)} new tokens{bars} "
          f"after a {out.prompt_length}-token prompt, {notes} notes, "
          f"{decoded.score.duration:.1f} s, stopped at {out.stop}, {decoded.skipped} tokens skipped")
    return 0
