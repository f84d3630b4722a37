"""Train the pretrained model that ships in music_attn/assets/model.npz.

Run from the repository root:

    python scripts/train_default.py                 # ~45 minutes on 2 cores
    python scripts/train_default.py --minutes 2     # a smoke run
    python scripts/train_default.py --resume        # continue build/train_default.npz
    python scripts/train_default.py --ablation --steps 800   # sinusoidal vs RoPE vs relative

REMI tokens of the train split of data/ (MANIFEST.csv), without Velocity
tokens (every note of the corpus has velocity 80: they would be a quarter of
each sequence and say nothing), transposition augmentation of -5..+5
semitones, validation loss on the validation split.
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
from music_attn.training.data import load_corpus
from music_attn.training.evaluate import model_nll
from music_attn.core.model import ModelConfig, init_model
from music_attn.music.tokenizers import RemiTokenizer
from music_attn.training.train import TrainConfig, TrainState, train, train_state_from_checkpoint

ROOT = Path(__file__).resolve().parent.parent
ASSET = ROOT / "music_attn" / "assets" / "model.npz"
CHECKPOINT = ROOT / "build" / "train_default.npz"
ABLATION = ROOT / "music_attn" / "assets" / "ablation.json"

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
    p.add_argument("--resume", action="store_true", help=f"continue {CHECKPOINT.relative_to(ROOT)}")
    p.add_argument("-o", "--output", default=str(ASSET))
    p.add_argument("--positional", choices=("sinusoidal", "rope", "relative"), default=MODEL["positional"])
    p.add_argument("--ablation", action="store_true",
                   help=f"train each positional option with the same budget and record {ABLATION.relative_to(ROOT)}")
    return p.parse_args(argv)


def _calibrated_steps(model, train_seqs, minutes):
    """Steps that fit the budget, from the time of a few steps on a throw-away copy."""
    probe = model.astype(model.dtype)
    config = dataclasses.replace(TRAIN, steps=CALIBRATION_STEPS, eval_every=0, checkpoint_every=0)
    train(probe, train_seqs, config, progress=False)        # warm up (the allocator settles)
    t0 = time.perf_counter()
    train(probe, train_seqs, config, progress=False)
    per_step = (time.perf_counter() - t0) / CALIBRATION_STEPS
    budget = minutes * 60 * 0.93                # leave room for validation and saving
    steps = int(min(TRAIN.steps, max(budget / per_step, 10)))
    tokens = TRAIN.batch_size * TRAIN.seq_len
    print(f"{per_step:.2f} s/step ({tokens / per_step:,.0f} tokens/s): {steps} steps in {minutes:g} min")
    return steps


def _train_one(args, positional, tokenizer, train_seqs, val_seqs, output, checkpoint):
    """Train (or resume) one model, save it to ``output``; returns a row of results."""
    if args.resume:
        ckpt = load_checkpoint(checkpoint)
        model = ckpt.model
        state = train_state_from_checkpoint(model, ckpt.train_state)
    else:
        rng = np.random.default_rng(TRAIN.seed)
        config = ModelConfig(vocab_size=tokenizer.vocab_size, **{**MODEL, "positional": positional})
        model = init_model(config, rng, tokenizer=tokenizer)
        steps = args.steps or _calibrated_steps(model, train_seqs, args.minutes)
        state = TrainState(model, dataclasses.replace(TRAIN, steps=steps), rng)
    print(model)
    t0 = time.perf_counter()
    state = train(model, train_seqs, state.config, state=state, val_sequences=val_seqs,
                  tokenizer=tokenizer, checkpoint=checkpoint, time_limit=args.minutes * 60 * 1.1)
    elapsed = time.perf_counter() - t0
    val, _ = model_nll(model, val_seqs)
    save_checkpoint(output, model)
    size = Path(output).stat().st_size / 2**20
    print(f"{state.step} steps in {elapsed / 60:.1f} min; validation NLL {val:.4f} nats/token "
          f"(perplexity {np.exp(val):.2f}); wrote {output} ({size:.1f} MB)")
    tokens = state.step * TRAIN.batch_size * TRAIN.seq_len
    row = {"positional": positional, "val_nll": val, "steps": state.step, "minutes": elapsed / 60,
           "tokens_per_s": tokens / elapsed}
    return row, state.interrupted


def main(argv=None):
    args = _parse(argv)
    tokenizer = RemiTokenizer(velocity_bins=0)
    train_seqs = load_corpus(args.data, tokenizer, "train", jobs=2)
    val_seqs = load_corpus(args.data, tokenizer, "validation", jobs=2)
    print(f"train: {len(train_seqs)} tunes, {sum(map(len, train_seqs)):,} tokens; "
          f"validation: {len(val_seqs)} tunes, {sum(map(len, val_seqs)):,} tokens")
    if not args.ablation:
        _, interrupted = _train_one(args, args.positional, tokenizer, train_seqs, val_seqs,
                                    args.output, CHECKPOINT)
        return 130 if interrupted else 0
    rows = []
    for positional in ("sinusoidal", "rope", "relative"):
        out = ROOT / "build" / f"ablation_{positional}.npz"
        row, interrupted = _train_one(args, positional, tokenizer, train_seqs, val_seqs, out, out)
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
