"""``music-attn train [DIR]``: train a model on a folder of MIDI files (resumable)."""

import signal

from music_attn.cli._options import add_force, default_of, integer, real
from music_attn.core.model import ATTENTIONS, POSITIONALS, ModelConfig
from music_attn.training.train import TrainConfig, train


def register(sub):
    p = sub.add_parser("train", help="train a model on a folder of MIDI files (progress bar, resumable)",
                       description="Train a decoder on the MIDI files of DIR (its train/validation split "
                                   "when DIR has a MANIFEST.csv). Ctrl-C saves a checkpoint; --resume "
                                   "continues exactly where it stopped.")
    p.add_argument("dir", nargs="?", default="data",
                   help="folder of MIDI files, or a token dataset from `tokenize DIR --out`")
    p.add_argument("-o", "--output", default="model.npz", help="checkpoint to write")
    p.add_argument("--resume", action="store_true", help="continue training the checkpoint at -o")
    p.add_argument("--tokenizer", choices=("remi", "performance"), default="remi", help="token vocabulary")
    p.add_argument("--jobs", type=integer(1, 1024), default=1, help="processes for tokenizing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--backend", choices=("numpy", "torch"), default="numpy",
                   help="train in numpy, or in PyTorch (CUDA when present; data-parallel under "
                        "`torchrun --nproc_per_node N`); both write the same checkpoint")
    add_force(p)
    _model_options(p.add_argument_group("model (ignored with --resume)"))
    _train_options(p.add_argument_group("optimisation"))
    p.set_defaults(func=_run)


def _model_options(g):
    m = lambda name: default_of(ModelConfig, name)       # noqa: E731 -- the one source of defaults
    g.add_argument("--d-model", type=integer(1, 1 << 16), default=m("d_model"), help="model width C")
    g.add_argument("--layers", type=integer(1, 1024), default=m("n_layers"), help="transformer blocks")
    g.add_argument("--heads", type=integer(1, 1024), default=m("n_heads"), help="attention heads (must divide --d-model)")
    g.add_argument("--d-ff", type=integer(1, 1 << 18), help="feed-forward width (default: 4 x --d-model)")
    g.add_argument("--max-len", type=integer(1, 1 << 20), help="longest sequence the model reads at once "
                   f"(default: the larger of --seq-len and {m('max_len')})")
    g.add_argument("--positional", choices=POSITIONALS, default=m("positional"), help="kind of positions")
    g.add_argument("--attention", choices=ATTENTIONS, default=m("attention"), help="attention pattern")
    g.add_argument("--window", type=integer(1, 1 << 20), default=m("window"), help="local / soft-align window, tokens")
    g.add_argument("--alpha", type=real(0, 1), default=m("alpha"), help="soft-align weight of the local part")


def _train_options(g):
    t = lambda name: default_of(TrainConfig, name)       # noqa: E731
    low, high = t("transpose")
    g.add_argument("--steps", type=integer(1), help=f"total optimizer steps (default: {t('steps')}; "
                   "with --resume, the checkpoint's, or more to extend the run)")
    g.add_argument("--batch-size", type=integer(1, 1 << 16), default=t("batch_size"), help="sequences per step")
    g.add_argument("--seq-len", type=integer(1, 1 << 20), default=t("seq_len"), help="training window length, tokens")
    g.add_argument("--lr", type=real(0, low_open=True), default=t("lr"),
                   help="peak learning rate (the cosine schedule ends at a tenth of it)")
    g.add_argument("--warmup", type=integer(0), default=t("warmup"), help="linear warmup steps")
    g.add_argument("--no-transpose", action="store_true",
                   help=f"no transposition augmentation (default: random shifts of {low}..{high - 1} semitones)")
    g.add_argument("--eval-every", type=integer(0), default=t("eval_every"),
                   help="validation every N steps (0: only at the end)")
    g.add_argument("--checkpoint-every", type=integer(0), default=t("checkpoint_every"),
                   help="save every N steps (0: only at the end; a run also saves after its first step)")
    g.add_argument("--checkpoint-seconds", type=real(0), default=default_of(train, "save_seconds"),
                   help="save at least this often, in seconds of training (0: off): what a kill may lose")
    g.add_argument("--seed", type=integer(0), default=t("seed"), help="seed of the run's random generator")


def _fresh(args, tokenizer):
    """A new model and its TrainState from the command line."""
    from music_attn.training.train import fresh_training
    names = ("d_model", "layers", "heads", "d_ff", "max_len", "positional", "attention", "window", "alpha",
             "steps", "batch_size", "seq_len", "lr", "warmup", "eval_every", "checkpoint_every", "no_transpose",
             "seed")
    return fresh_training(tokenizer, **{name: getattr(args, name) for name in names})


def _backend(name):
    """(train function, is this the main process) of a backend."""
    if name == "numpy":
        from music_attn.training.train import train
        return train, True
    try:
        from music_attn.interop.torch_bridge import init_distributed, train_torch
    except ImportError:
        raise ValueError("--backend torch needs PyTorch: pip install 'music_attn[torch]'") from None
    return train_torch, init_distributed()[0] == 0


def _run(args):
    from music_attn._io import check_output
    from music_attn.training.dataset import corpus_splits, folder_tokenizer, training_inputs
    from music_attn.training.train import resume_training
    check_output(args.output, inputs=training_inputs(args.dir), force=args.force)   # before minutes of tokenizing
    train, main = _backend(args.backend)
    if args.resume:
        model, state = resume_training(args.output, steps=args.steps)
    else:
        model, state = _fresh(args, folder_tokenizer(args.dir, args.tokenizer))
    train_seqs, val_seqs = corpus_splits(args.dir, model.tokenizer, jobs=args.jobs, progress=not args.quiet and main)
    if not main:
        train(model, train_seqs, state.config, state=state, val_sequences=val_seqs,
              checkpoint=args.output, progress=False)
        return 0
    print(f"{model!r}\ntraining on {len(train_seqs)} sequences ({sum(map(len, train_seqs)):,} tokens), "
          f"validating on {len(val_seqs)}; from step {state.step} to {state.config.steps}")
    extra = dict(save_seconds=args.checkpoint_seconds, force=args.force) if args.backend == "numpy" else {}
    state = train(model, train_seqs, state.config, state=state, val_sequences=val_seqs,
                  checkpoint=args.output, progress=not args.quiet, **extra)
    last = state.history[-1] if state.history else {}
    summary = f"step {state.step}: loss {last.get('loss', float('nan')):.4f}"
    if state.interrupted:
        how = "terminated" if getattr(state, "stop_signal", None) == signal.SIGTERM else "interrupted"
        print(f"{how}; saved {args.output} at {summary} (continue with --resume)")
        return 128 + (getattr(state, "stop_signal", None) or signal.SIGINT)
    print(f"wrote {args.output} ({summary})")
    return 0
