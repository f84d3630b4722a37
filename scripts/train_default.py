"""Train the pretrained model that ships in music_attn/assets/model.npz.

Run from the repository root:

    python scripts/train_default.py                 # ~45 minutes on 2 cores
    python scripts/train_default.py --minutes 2     # a smoke run
    python scripts/train_default.py --resume        # continue build/train_default.npz
    python scripts/train_default.py --ablation --steps 800   # sinusoidal vs RoPE vs relative

The model that knows more music (issue 23): windows of 1,024 tokens, started
from the shipped model's weights, on the folk tunes, the chorales and POP909
(build it first: ``python scripts/build_pop909.py --source POP909-Dataset``)::

    python scripts/train_default.py --window 1024 --init music_attn/assets/model.npz \
        --pop909 data/pop909 --minutes 600

REMI tokens of the train split of data/ (MANIFEST.csv) and, with --pop909, of
the train split of POP909's melody and piano files, without Velocity tokens
(every note of the corpus has velocity 80: they would be a quarter of each
sequence and say nothing), transposition augmentation of -5..+5 semitones.
Validation NLL is measured per style (folk, chorales, pop) on the validation
splits, printed and appended to the log (--log).  With --init the weights start
from a model of the same widths (each layer's relative table ``hN.attn.rel``
widened to the new window with zeros for the new distances).
The number of steps is fixed by timing the first steps against the budget
(or by --steps), so the cosine schedule always runs to its end.  The full
training checkpoint (with optimizer state, resumable) goes to
build/train_default.npz; the weights-only model to music_attn/assets/model.npz.
"""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from music_attn._io import atomic_write
from music_attn.runtime.checkpoint import load_checkpoint, save_checkpoint
from music_attn.runtime.checkpoint import load_model
from music_attn.runtime.windows import corpus_nll
from music_attn.training.data import read_manifest, tokenize_files
from music_attn.core.model import ModelConfig, init_model
from music_attn.music.tokenizers import RemiTokenizer
from music_attn.training.train import TrainConfig, TrainState, train, train_state_from_checkpoint

ROOT = Path(__file__).resolve().parent.parent
ASSET = ROOT / "music_attn" / "assets" / "model.npz"
CHECKPOINT = ROOT / "build" / "train_default.npz"
ABLATION = ROOT / "music_attn" / "assets" / "ablation.json"
LOG = ROOT / "build" / "train_default.log"
MAX_MODEL_MB = 25                  # the shipped model file stays within this
STYLES = {"folk": ("oneills1850", "ryansMammoth", "airdsAirs"), "chorales": ("bach",),
          "pop": ("pop909-melody", "pop909-piano"),
          # POP909's own files: all three tracks, the file's own timing (not the beat grid)
          "pop-files": ("pop909-file",)}

# Small enough to train in the budget on 2 cores, big enough to beat an n-gram:
# relative positions (Music Transformer), 4 blocks of width 192, windows of 256
# tokens (about 16 bars of a reel; the model sees no further back than that).
MODEL = dict(d_model=192, n_layers=4, n_heads=4, d_ff=768, max_len=256,
             positional="relative", attention="full", window=32)
TRAIN = TrainConfig(steps=6000, batch_size=16, seq_len=256, lr=1.5e-3, min_lr=1e-4, warmup=200,
                    weight_decay=0.05, grad_clip=1.0, eval_every=250, eval_tokens=65536,
                    checkpoint_every=250, transpose=(-5, 6), seed=0, workers=2)
CALIBRATION_STEPS = 6


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=45.0, help="training time budget")
    p.add_argument("--steps", type=int, help="fix the number of steps (no timing)")
    p.add_argument("--data", default=str(ROOT / "data"))
    p.add_argument("--pop909", metavar="DIR", help="also train on POP909 (scripts/build_pop909.py's output)")
    p.add_argument("--window", type=int, default=MODEL["max_len"], help="tokens per window (max_len)")
    p.add_argument("--batch-size", type=int, help="windows per step (default: 16 x 256 tokens / window, "
                                                  "at least 4)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1.5e-3; 5e-4 with --init)")
    p.add_argument("--init", metavar="OLD.npz", help="start from this model's weights (same widths)")
    p.add_argument("--resume", action="store_true", help=f"continue {CHECKPOINT.relative_to(ROOT)}")
    p.add_argument("-o", "--output", default=str(ASSET))
    p.add_argument("--log", default=str(LOG), help="validation NLL per style is appended here")
    p.add_argument("--positional", choices=("sinusoidal", "rope", "relative"), default=MODEL["positional"])
    p.add_argument("--ablation", action="store_true",
                   help=f"train each positional option with the same budget and record {ABLATION.relative_to(ROOT)}")
    return p.parse_args(argv)


def _train_config(args):
    """TRAIN with the window, batch size and learning rate of the command line."""
    batch = args.batch_size or max(4, TRAIN.batch_size * TRAIN.seq_len // args.window)
    lr = args.lr or (5e-4 if args.init else TRAIN.lr)
    return dataclasses.replace(TRAIN, seq_len=args.window, batch_size=batch, lr=lr,
                               min_lr=min(TRAIN.min_lr, lr / 10), warmup=100 if args.init else TRAIN.warmup)


def _style_paths(args, split):
    """{style: MIDI paths of ``split``} over the corpus (folk, chorales) and POP909 (pop)."""
    rows = [(Path(args.data), r) for r in read_manifest(args.data)]
    if args.pop909:
        rows += [(Path(args.pop909), r) for r in read_manifest(args.pop909)]
    out = {}
    for style, collections in STYLES.items():
        paths = [folder / r["file"] for folder, r in rows
                 if r["collection"] in collections and r["split"] == split]
        if paths:
            out[style] = paths
    return out


def _load_weights(model, path):
    """Copy the weights of the model at ``path`` into ``model`` (same widths, a window no longer).

    Each layer's relative table ``hN.attn.rel`` (H, L, D) holds distance L-1-i in
    row i (row L-1 = distance 0): the old rows go to the end, the new (longer)
    distances start at zero, so at first the model attends as it did.
    """
    source = load_model(path)
    mine, theirs = model.config, source.config
    same = ("d_model", "n_layers", "n_heads", "d_ff", "positional", "vocab_size")
    if any(getattr(mine, k) != getattr(theirs, k) for k in same) or theirs.max_len > mine.max_len:
        raise SystemExit(f"error: {path} is not a model of the same widths with a window of at most "
                         f"{mine.max_len} tokens")
    if source.tokenizer.to_dict() != model.tokenizer.to_dict():
        raise SystemExit(f"error: {path} has another tokenizer")
    for name, value in model.params.items():
        if name.endswith("attn.rel"):                        # (H, L, D), row L-1 = distance 0
            value[...] = 0.0
            value[:, mine.max_len - theirs.max_len:] = source.params[name]
        else:
            value[...] = source.params[name]


def _calibrated_steps(model, train_seqs, minutes, config):
    """Steps that fit the budget, from the time of a few steps on a throw-away copy."""
    probe = model.astype(model.dtype)
    probe_config = dataclasses.replace(config, steps=CALIBRATION_STEPS, eval_every=0, checkpoint_every=0)
    train(probe, train_seqs, probe_config, progress=False)  # warm up (the allocator settles)
    t0 = time.perf_counter()
    train(probe, train_seqs, probe_config, progress=False)
    per_step = (time.perf_counter() - t0) / CALIBRATION_STEPS
    budget = minutes * 60 * 0.90                # leave room for validation and saving
    steps = int(min(config.steps, max(budget / per_step, 10)))
    tokens = config.batch_size * config.seq_len
    print(f"{per_step:.2f} s/step ({tokens / per_step:,.0f} tokens/s): {steps} steps in {minutes:g} min")
    return steps


def _log(path, text):
    print(text, flush=True)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(text + "\n")


def _validate(model, val, state, args):
    """Validation NLL per style: printed, logged, kept in the history and the model's metrics."""
    config = state.config
    scores = {style: corpus_nll(model, seqs, window=config.seq_len, batch_size=config.batch_size,
                                max_tokens=config.eval_tokens) for style, seqs in val.items()}
    tokens = sum(n for _, n in scores.values())
    overall = sum(nll * n for nll, n in scores.values()) / max(tokens, 1)
    record = {f"val_{style}": nll for style, (nll, _) in scores.items()}
    if state.history:
        state.history[-1].update(record, val_loss=overall)
    model.metrics = {**(getattr(model, "metrics", None) or {}), "validation_nats_per_token": overall,
                     "validation_tokens": tokens, "validation_step": state.step,
                     **{f"validation_{style}": nll for style, (nll, _) in scores.items()}}
    loss = state.history[-1]["loss"] if state.history else float("nan")
    _log(args.log, f"step {state.step}: train loss {loss:.4f}; validation NLL "
                   + ", ".join(f"{style} {nll:.4f}" for style, (nll, _) in scores.items())
                   + f" (all {overall:.4f} nats/token, {tokens:,} tokens)")
    return overall


def _new_state(args, positional, tokenizer, train_seqs):
    """A fresh model (or one started from --init) and its TrainState."""
    rng = np.random.default_rng(TRAIN.seed)
    config = ModelConfig(vocab_size=tokenizer.vocab_size,
                         **{**MODEL, "positional": positional, "max_len": args.window})
    model = init_model(config, rng, tokenizer=tokenizer)
    if args.init:
        _load_weights(model, args.init)
    tconf = _train_config(args)
    steps = args.steps or _calibrated_steps(model, train_seqs, args.minutes, tconf)
    tconf = dataclasses.replace(tconf, steps=steps, warmup=min(tconf.warmup, max(steps // 10, 1)))
    return model, TrainState(model, tconf, rng)


def _train_one(args, positional, tokenizer, train_seqs, val, output, checkpoint):
    """Train (or resume) one model, save it to ``output``; returns a row of results."""
    if args.resume:
        ckpt = load_checkpoint(checkpoint)
        model = ckpt.model
        state = train_state_from_checkpoint(model, ckpt.train_state)
        if args.steps and args.steps != state.config.steps:      # a shorter or longer schedule from here
            state.config = dataclasses.replace(state.config, steps=args.steps)
            _log(args.log, f"# resumed at step {state.step}; the cosine schedule now ends at step {args.steps}")
    else:
        model, state = _new_state(args, positional, tokenizer, train_seqs)
        _log(args.log, f"# {model!r}; {json.dumps(state.config.to_dict())}"
                       + (f"; weights from {args.init}" if args.init else ""))
    print(model)
    Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    deadline = t0 + args.minutes * 60 * 1.1
    every = state.config.eval_every or state.config.steps
    val_nll = None
    while state.step < state.config.steps and time.perf_counter() < deadline:
        stop = min(state.config.steps, (state.step // every + 1) * every)
        state = train(model, train_seqs, state.config, state=state, tokenizer=tokenizer, checkpoint=checkpoint,
                      stop_after=stop, time_limit=deadline - time.perf_counter())
        val_nll = _validate(model, val, state, args)
        if state.interrupted:
            break
    if val_nll is None:                          # nothing left to train: measure what there is
        val_nll = _validate(model, val, state, args)
    save_checkpoint(checkpoint, model, train_state=state.to_checkpoint())   # with the validation record
    elapsed = time.perf_counter() - t0
    save_checkpoint(output, model)
    size = Path(output).stat().st_size / 2**20
    _log(args.log, f"{state.step} steps in {elapsed / 60:.1f} min; validation NLL {val_nll:.4f} nats/token "
                   f"(perplexity {np.exp(val_nll):.2f}); wrote {output} ({size:.1f} MB)")
    if size > MAX_MODEL_MB:
        print(f"warning: {output} is {size:.1f} MB, over the {MAX_MODEL_MB} MB the package allows")
    tokens = state.step * state.config.batch_size * state.config.seq_len
    row = {"positional": positional, "val_nll": val_nll, "steps": state.step, "minutes": elapsed / 60,
           "tokens_per_s": tokens / max(elapsed, 1e-9)}
    return row, getattr(state, "interrupted", False)


def _load_data(args, tokenizer):
    """(train sequences, {style: validation sequences}), with their sizes printed."""
    train_paths = [p for paths in _style_paths(args, "train").values() for p in paths]
    train_seqs = tokenize_files(train_paths, tokenizer, jobs=2)
    val = {style: tokenize_files(paths, tokenizer, jobs=2)
           for style, paths in _style_paths(args, "validation").items()}
    print(f"train: {len(train_seqs)} files, {sum(map(len, train_seqs)):,} tokens; validation: "
          + ", ".join(f"{style} {len(seqs)} files {sum(map(len, seqs)):,} tokens" for style, seqs in val.items()))
    return train_seqs, val


def main(argv=None):
    args = _parse(argv)
    tokenizer = RemiTokenizer(velocity_bins=0)
    train_seqs, val = _load_data(args, tokenizer)
    if not args.ablation:
        _, interrupted = _train_one(args, args.positional, tokenizer, train_seqs, val,
                                    args.output, CHECKPOINT)
        return 130 if interrupted else 0
    rows = []
    for positional in ("sinusoidal", "rope", "relative"):
        out = ROOT / "build" / f"ablation_{positional}.npz"
        row, interrupted = _train_one(args, positional, tokenizer, train_seqs, val, out, out)
        rows.append(row)
        if interrupted:
            return 130
    budget = (f"{rows[0]['steps']} steps of {TRAIN.batch_size} x {TRAIN.seq_len} tokens each, "
              f"d_model {MODEL['d_model']}, {MODEL['n_layers']} layers, {MODEL['n_heads']} heads")
    with atomic_write(ABLATION, "w") as f:
        json.dump({"budget": budget, "rows": rows}, f, indent=2)
    print(f"wrote {ABLATION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
