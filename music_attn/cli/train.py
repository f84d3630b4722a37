"""``music-attn train [DIR]``: train a model on a folder of MIDI files (resumable)."""

from pathlib import Path

from music_attn.core.model import ATTENTIONS, POSITIONALS

_DEFAULTS = dict(d_model=128, n_layers=4, n_heads=4, d_ff=512, max_len=256)


def register(sub):
    p = sub.add_parser("train", help="train a model on a folder of MIDI files (progress bar, resumable)",
                       description="Train a decoder on the MIDI files of DIR (its train/validation split "
                                   "when DIR has a MANIFEST.csv). Ctrl-C saves a checkpoint; --resume "
                                   "continues exactly where it stopped.")
    p.add_argument("dir", nargs="?", default="data",
                   help="folder of MIDI files, or a token dataset from `tokenize DIR --out` (default: data)")
    p.add_argument("-o", "--output", default="model.npz", help="checkpoint to write (default: model.npz)")
    p.add_argument("--resume", action="store_true", help="continue training the checkpoint at -o")
    p.add_argument("--tokenizer", choices=("remi", "performance"), default="remi")
    p.add_argument("--steps", type=int, help="total optimizer steps (default 2000)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256, help="training window length")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--d-model", type=int, default=_DEFAULTS["d_model"])
    p.add_argument("--layers", type=int, default=_DEFAULTS["n_layers"])
    p.add_argument("--heads", type=int, default=_DEFAULTS["n_heads"])
    p.add_argument("--d-ff", type=int, help="feed-forward width (default 4 x d-model)")
    p.add_argument("--positional", choices=POSITIONALS, default="relative")
    p.add_argument("--attention", choices=ATTENTIONS, default="full")
    p.add_argument("--window", type=int, default=32, help="local / soft-align window")
    p.add_argument("--no-transpose", action="store_true", help="no transposition augmentation")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--jobs", type=int, default=1, help="processes for tokenizing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--backend", choices=("numpy", "torch"), default="numpy",
                   help="train in numpy, or in PyTorch (CUDA when present; data-parallel under "
                        "`torchrun --nproc_per_node N`); both write the same checkpoint")
    p.set_defaults(func=_run)


def _tokenizer(name):
    from music_attn.music.tokenizer import PerformanceTokenizer, RemiTokenizer
    return RemiTokenizer() if name == "remi" else PerformanceTokenizer()


def _corpus(folder, tokenizer, jobs, progress):
    """(train, validation) token sequences of a folder: its manifest split, else by title hash.

    A token dataset gives memory-mapped sequences (its tokenizer must be the model's).
    """
    from music_attn.training import data, dataset
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    if dataset.is_dataset(folder):
        ds = dataset.open_dataset(folder)
        if ds.tokenizer_config != tokenizer.to_dict():
            raise ValueError(f"{folder}: tokenized with {ds.tokenizer_config}, not the model's tokenizer")
        return ds.sequences("train") or ds.sequences("all"), ds.sequences("validation")
    options = dict(jobs=jobs, progress=progress)
    if (folder / data.MANIFEST).is_file():
        return (data.load_corpus(folder, tokenizer, "train", **options),
                data.load_corpus(folder, tokenizer, "validation", **options))
    seqs, paths = data.tokenize_folder(folder, tokenizer, return_paths=True, **options)
    if not seqs:
        raise ValueError(f"{folder}: no readable MIDI files")
    split = [data.split_for_title(Path(p).stem) for p in paths]
    train = [s for s, k in zip(seqs, split) if k == "train"] or seqs
    return train, [s for s, k in zip(seqs, split) if k == "validation"]


def _fresh(args, tokenizer):
    """A new model, its TrainConfig and TrainState from the command line."""
    import numpy as np
    from music_attn.core.model import ModelConfig, init_model
    from music_attn.training.train import TrainConfig, TrainState
    config = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=args.d_model, n_layers=args.layers,
                         n_heads=args.heads, d_ff=args.d_ff or 4 * args.d_model,
                         max_len=max(args.seq_len, _DEFAULTS["max_len"]),
                         positional=args.positional, attention=args.attention, window=args.window)
    tconf = TrainConfig(steps=args.steps or 2000, batch_size=args.batch_size, seq_len=args.seq_len,
                        lr=args.lr, min_lr=args.lr / 10, warmup=args.warmup,
                        eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                        transpose=None if args.no_transpose else (-5, 6), seed=args.seed)
    rng = np.random.default_rng(args.seed)
    model = init_model(config, rng, tokenizer=tokenizer)
    return model, TrainState(model, tconf, rng)


def _resumed(args):
    """Model and TrainState from the checkpoint at -o (``--steps`` may extend the run)."""
    import dataclasses
    from music_attn.training.checkpoint import load_checkpoint
    from music_attn.errors import CheckpointError
    from music_attn.training.train import TrainConfig, train_state_from_checkpoint
    ckpt = load_checkpoint(args.output)
    if ckpt.train_state is None:
        raise CheckpointError(f"{args.output}: holds no training state to resume from")
    config = TrainConfig.from_dict(ckpt.train_state["meta"]["config"])
    if args.steps:
        config = dataclasses.replace(config, steps=args.steps)
    return ckpt.model, train_state_from_checkpoint(ckpt.model, ckpt.train_state, config)


def _dataset_tokenizer(folder, name):
    """The tokenizer of a token dataset at ``folder``, else the one named by --tokenizer."""
    from music_attn.training import dataset
    if Path(folder).is_dir() and dataset.is_dataset(folder):
        return dataset.open_dataset(folder).tokenizer
    return _tokenizer(name)


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
    train, main = _backend(args.backend)
    if args.resume:
        model, state = _resumed(args)
    else:
        model, state = _fresh(args, _dataset_tokenizer(args.dir, args.tokenizer))
    train_seqs, val_seqs = _corpus(args.dir, model.tokenizer, args.jobs, not args.quiet and main)
    if not main:
        train(model, train_seqs, state.config, state=state, val_sequences=val_seqs,
              checkpoint=args.output, progress=False)
        return 0
    print(f"{model!r}\ntraining on {len(train_seqs)} sequences ({sum(map(len, train_seqs)):,} tokens), "
          f"validating on {len(val_seqs)}; from step {state.step} to {state.config.steps}")
    state = train(model, train_seqs, state.config, state=state, val_sequences=val_seqs,
                  checkpoint=args.output, progress=not args.quiet)
    last = state.history[-1] if state.history else {}
    summary = f"step {state.step}: loss {last.get('loss', float('nan')):.4f}"
    if state.interrupted:
        print(f"interrupted; saved {args.output} at {summary} (continue with --resume)")
        return 130
    print(f"wrote {args.output} ({summary})")
    return 0
