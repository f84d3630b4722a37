"""``music-attn generate``: sample a continuation of a MIDI prompt (or from nothing) to MIDI."""

import sys


def register(sub):
    p = sub.add_parser("generate",
                       help="sample a continuation of --prompt FILE.mid (or from nothing) to MIDI",
                       description="Continue a MIDI prompt with the model (the shipped one by default), "
                                   "sampling under the tokenizer's grammar, and write a MIDI file.")
    p.add_argument("-m", "--model", help="checkpoint (.npz); default: the shipped pretrained model")
    p.add_argument("--prompt", metavar="FILE.mid", help="MIDI file to continue (default: start from nothing)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--bars", type=int, help="number of bars to generate (default 8)")
    budget.add_argument("--tokens", type=int, help="number of tokens to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, help="sample among the smallest set with this much mass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unconstrained", action="store_true", help="do not mask tokens the grammar forbids")
    p.add_argument("--drums", action="store_true", help="keep the prompt's drum notes (left out by default)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.mid", help="MIDI file to write")
    p.set_defaults(func=_run)


def _check(args):
    for name in ("bars", "tokens", "top_k"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must lie in (0, 1], got {args.top_p}")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")


def _run(args):
    import numpy as np
    from music_attn.training.generate import generate
    from music_attn.music.midi import write_midi
    from music_attn.training.checkpoint import load_model
    _check(args)
    model = load_model(args.model)
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError(f"{args.model}: the checkpoint has no tokenizer to turn tokens into MIDI")
    if args.drums:
        tokenizer = tokenizer.with_options(include_drums=True)
    prompt = tokenizer.encode(args.prompt) if args.prompt else None
    if prompt is not None and prompt.dropped_drums:
        sys.stderr.write(f"note: {args.prompt}: {prompt.dropped_drums} drum notes left out (--drums keeps them)\n")
    prompt = prompt.ids if prompt is not None else None
    n_bars = args.bars if args.bars or args.tokens else 8
    out = generate(model, prompt, max_new_tokens=args.tokens, n_bars=n_bars if not args.tokens else None,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   rng=np.random.default_rng(args.seed), constrained=not args.unconstrained)
    decoded = tokenizer.decode(out.ids)
    write_midi(args.output, decoded.score)
    new = out.ids[out.prompt_length:]
    notes = len(decoded.score)
    bars = "" if tokenizer.bar_id is None else f" ({int(np.sum(new == tokenizer.bar_id))} bars)"
    print(f"wrote {args.output}: {len(new)} new tokens{bars} "
          f"after a {out.prompt_length}-token prompt, {notes} notes, "
          f"{decoded.score.duration:.1f} s, stopped at {out.stop}, {decoded.skipped} tokens skipped")
    return 0
