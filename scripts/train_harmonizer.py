"""Train the harmonizer: the JSB Chorales grid model, reading the melody ahead of each step.

Run from the repository root (the data folder holds train.json and valid.json):

    python scripts/train_harmonizer.py --data ../shared/data/jsb -o benchmarks/harmonizer.npz \\
        --init benchmarks/jsb_chorales.npz --steps 4500 --freeze-base 1500
    python scripts/train_harmonizer.py --data ../shared/data/jsb -o benchmarks/harmonizer.npz \\
        --resume --freeze-base 1500
    python scripts/train_harmonizer.py --data ../shared/data/jsb -o benchmarks/harmonizer.npz \
        --resume --freeze-base 1500 --steps 7500 --average 5      # a longer schedule, averaged
    python scripts/train_harmonizer.py --data ../shared/data/jsb -o benchmarks/harmonizer_distilled.npz \
        --init benchmarks/harmonizer.npz --teacher benchmarks/harmonizer.npz --distill 0.7 \
        --freeze-base 0 --steps 2500 --lr 5e-5                     # distil the three-key reading
    python scripts/train_harmonizer.py --data ../shared/data/jsb -o benchmarks/harmonizer.npz --eval

The model is the four-voice grid model of the JSB benchmark (soprano, alto, tenor,
bass at each sixteenth, :class:`music_attn.GridTokenizer`) with one more input: at
every position it reads the soprano of the next ``K`` sixteenths as condition tokens
(``ModelConfig.condition``; :func:`music_attn.runtime.harmonize.melody_condition`),
so that the alto, tenor and bass of a step are chosen knowing where the melody goes
for the next ``K / 16`` bars of 4/4, as well as all the music before them.

It starts from the JSB benchmark's weights (``--init``; the condition table starts at
zero, so step 0 is that model exactly).  For the first ``--freeze-base`` steps only the
condition table learns (at ``--cond-lr``, constant after a warmup), so the model can only
gain from reading ahead; then every weight is tuned on a cosine schedule from ``--lr``.
(Tuning every weight from the start at 3e-4 first lost 0.01-0.02 nats: the JSB weights
are an average of a long run, and a fresh optimizer pushes them off it.)
The JSB weights have all but learnt the train split by heart (their training loss is
about 0.26 nats per cell against 0.33 on validation), so the train split alone teaches the
condition little: the first ``--valid-train`` chorales of the validation split (which the
JSB model never trained on; it used them only to choose its checkpoint) join the
training data, and the remaining validation chorales choose the checkpoint and give
every figure reported (docs/harmonize.md).  It is trained on those, with
transposition augmentation (-5..+5 semitones) and dropout; only the alto, tenor and
bass cells are scored (the soprano is given).  The validation split chooses the
checkpoint kept (the held-out half): the NLL of alto, tenor and bass per cell given the soprano
(:func:`music_attn.runtime.harmonize.harmonization_nll`).

``--resume --steps N`` stretches the cosine schedule to N steps (the learning rate
rises to where the longer schedule stands, then decays to its end).  ``--average K``
also scores the mean of the weights at the last K evaluations (a running average of
the trajectory, as the JSB benchmark's weights are) and keeps it when it is better.

``--teacher MODEL`` distils a harmonizer read in ``--teacher-keys`` keys (the mixture of
:mod:`music_attn.runtime.keys`) into one pass: each scored cell's target is
``(1 - ALPHA)`` x the one-hot of Bach's cell plus ``ALPHA`` x the teacher's distribution
(``--distill ALPHA``).  ``--init`` may be a harmonizer, whose condition table is kept.
The validation figure that chooses the checkpoint is always one pass in the written key.

Files: ``-o`` the best model (float32 weights, shipped as music_attn/assets/harmonizer.npz);
``<output>.state.npz`` the last training state (exact resume; saved every
``--eval-every`` steps, at SIGINT and SIGTERM); ``<output minus .npz>.log`` the curve.
"""

import argparse
import collections
import dataclasses
import datetime
import json
import signal
import sys
import time
from pathlib import Path

import numpy as np

from music_attn.core.model import ModelConfig, Model, parallel_map
from music_attn.music.tokenizers.grid import GridTokenizer
from music_attn.core.ops import log_softmax
from music_attn.runtime.harmonize import condition_of, harmonization_nll
from music_attn.runtime.keys import KEYS, dead_after, key_shifts, mix, shift_table
from music_attn.runtime.checkpoint import load_checkpoint, load_model, save_checkpoint
from music_attn.training.data import pitch_table
from music_attn.training.train import (TrainConfig, TrainState, clip_grads, clock_deadline, lr_at,
                                       skip_target_phases, train_state_from_checkpoint)

K_AHEAD = 32               # sixteenths of melody read ahead: two bars of 4/4
VALID_TRAIN = 38           # validation chorales trained on (the first half); the other 38 validate
TRAIN = TrainConfig(steps=4500, batch_size=2, seq_len=1024, lr=1e-4, min_lr=1e-5, warmup=100,
                    weight_decay=0.05, grad_clip=1.0, eval_every=100, checkpoint_every=100,
                    transpose=(-5, 6), seed=0, workers=2, skip_targets=(4, 1))


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder with train.json and valid.json")
    p.add_argument("-o", "--output", default="benchmarks/harmonizer.npz")
    p.add_argument("--init", help="JSB grid checkpoint to start from")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--eval", action="store_true", help="print the validation NLL of --output")
    p.add_argument("--steps", type=int, help=f"steps of the schedule (default {TRAIN.steps}; with --resume, "
                                                "the saved schedule's)")
    p.add_argument("--average", type=int, default=0, metavar="K",
                   help="also score the mean weights of the last K evaluations")
    p.add_argument("--lr", type=float, default=TRAIN.lr)
    p.add_argument("--freeze-base", type=int, default=1500, metavar="N",
                   help="steps that train only the condition table (give the same value to --resume)")
    p.add_argument("--cond-lr", type=float, default=1e-3, help="learning rate of those steps")
    p.add_argument("--valid-train", type=int, default=VALID_TRAIN, metavar="N",
                   help="the first N validation chorales are trained on; the rest validate")
    p.add_argument("--ahead", type=int, default=K_AHEAD, help="sixteenths of melody read ahead")
    p.add_argument("--teacher", metavar="MODEL.npz", help="distil this harmonizer read in --teacher-keys keys")
    p.add_argument("--teacher-keys", type=int, default=KEYS, help=f"keys the teacher reads (default {KEYS})")
    p.add_argument("--distill", type=float, default=0.5, metavar="ALPHA",
                   help="with --teacher, the weight of the teacher's distribution in each target (the one-hot "
                        "of Bach's cell has 1 - ALPHA; default 0.5)")
    p.add_argument("--until", metavar="HH:MM", help="stop by this UTC clock time (resumable)")
    p.add_argument("--seed", type=int, default=TRAIN.seed)
    return p.parse_args(argv)


def load_grids(folder, split):
    path = Path(folder) / f"{split}.json"
    return [np.asarray(c, dtype=np.int64).reshape(-1, 4) for c in json.loads(path.read_text())]


def encoded(tokenizer, grids, K, eos=False):
    """(ids, condition (n, K)) of each chorale: ``[BOS] + 4 S cells (+ EOS)``."""
    out = []
    for grid in grids:
        ids = tokenizer.encode_grid(grid).ids
        if eos:
            ids = np.append(ids, tokenizer.eos_id)
        out.append((ids.astype(np.int64), condition_of(tokenizer, grid[:, 0], len(ids), K)))
    return out


def _transposed(ids, cond, pitches, low, high, rng, shifts):
    """ids and condition moved by one random shift that keeps every pitch in range."""
    p = pitches[ids]
    q = pitches[cond]
    used = np.concatenate([p[p >= 0], q[q >= 0]])
    ok = [s for s in range(*shifts) if used.min() + s >= low and used.max() + s <= high]
    s = ok[rng.integers(len(ok))]
    return np.where(p >= 0, ids + s, ids), np.where(q >= 0, cond + s, cond)


def batch(data, config, rng, tokenizer, K):
    """Inputs, targets (B, T) and condition (B, T, K) of one random batch."""
    T, B = config.seq_len, config.batch_size
    lengths = np.array([len(ids) for ids, _ in data])
    picks = rng.choice(len(data), size=B, p=lengths / lengths.sum())
    pitches, (low, high) = pitch_table(tokenizer), tokenizer.pitch_range
    ids = np.full((B, T + 1), tokenizer.pad_id, np.int64)
    cond = np.full((B, T, K), tokenizer.pad_id, np.int64)
    for row, i in enumerate(picks):
        seq, c = data[i]
        start = rng.integers(0, max(len(seq) - T - 1, 0) // 16 + 1) * 16
        seq, c = _transposed(seq[start:start + T + 1], c[start:start + T], pitches, low, high, rng,
                             config.transpose)
        ids[row, :len(seq)], cond[row, :len(c)] = seq, c
    inputs, targets = ids[:, :-1], ids[:, 1:].copy()
    targets[targets == tokenizer.pad_id] = -1
    skip_target_phases(targets, config, 16)                 # the soprano is given, not scored
    return inputs, targets, cond


def validate(model, grids):
    """Mean NLL per alto, tenor or bass cell over the chorales, and the count of cells."""
    def one(grid):
        return harmonization_nll(grid, model=model, keys=1, total=True)
    parts = parallel_map(one, grids)
    total, count = (sum(x) for x in zip(*parts))
    return total / count, count


def teacher_targets(teacher, shifts, inputs, targets, cond, alpha):
    """(B, T, V) distillation targets: (1 - alpha) x the one-hot of each target plus alpha x the
    teacher's distribution read in the keys ``shifts`` (:mod:`music_attn.runtime.keys`).

    A key reads a row only when the row's melody ahead (its condition tokens) fits the range
    in it, and drops out from the first lower-voice note it cannot spell.
    """
    tok, (B, T), K = teacher.tokenizer, inputs.shape, len(shifts)
    tables = np.stack([shift_table(tok, s) for s in shifts])                 # (K, V)
    moved, moved_cond = tables[:, inputs], tables[:, cond]                   # (K, B, T), (K, B, T, C)
    live = (moved_cond >= 0).all(axis=(2, 3))[:, :, None] & ~dead_after(moved)
    logits = teacher.forward(np.where(moved < 0, tok.rest_id, moved).reshape(K * B, T),
                             condition=np.where(moved_cond < 0, tok.pad_id, moved_cond).reshape(K * B, T, -1))
    probs = np.exp(log_softmax(np.asarray(logits, np.float64))).reshape(K, B * T, -1).swapaxes(0, 1)
    q = mix(probs, tables, live.reshape(K, B * T).T).reshape(B, T, -1)
    return (1 - alpha) * np.eye(q.shape[-1])[np.maximum(targets, 0)] + alpha * q


def _fresh(args, tokenizer):
    source = load_model(args.init)
    config = ModelConfig(**{**source.config.to_dict(), "condition": args.ahead, "dropout": 0.1})
    params = dict(source.params)
    if source.config.condition != args.ahead:            # a JSB model: the condition table starts at zero
        params["cond_emb"] = np.zeros((args.ahead, config.vocab_size, config.d_model), np.float32)
    model = Model(config, {k: v.copy() for k, v in params.items()}, tokenizer=tokenizer)
    tconf = dataclasses.replace(TRAIN, steps=args.steps or TRAIN.steps, lr=args.lr, seed=args.seed)
    return model, TrainState(model, tconf, np.random.default_rng(args.seed))


class _Stop:
    """SIGINT and SIGTERM ask the loop to stop after the current step (a second SIGINT: at once)."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True


def run_training(args):
    output = Path(args.output)
    state_path, log_path = output.with_suffix(".state.npz"), output.with_suffix(".log")
    tokenizer = GridTokenizer()

    def log(line):
        print(line, flush=True)
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    if args.resume:
        ckpt = load_checkpoint(state_path)
        model, state = ckpt.model, train_state_from_checkpoint(ckpt.model, ckpt.train_state)
        if args.steps:
            state.config = dataclasses.replace(state.config, steps=args.steps)
        log(f"# resumed at step {state.step}" + (f"; schedule of {state.config.steps} steps" if args.steps else "")
            + (f"; averaging the weights of the last {args.average} evaluations" if args.average else ""))
    else:
        model, state = _fresh(args, tokenizer)
        log(f"# started {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC from {args.init}")
        log(f"# {model!r}\n# {json.dumps(model.config.to_dict())}\n# {json.dumps(state.config.to_dict())}")
        log("# minutes  step  train_loss  val_nll_per_cell  best")
    K = model.config.condition
    teacher = None
    if args.teacher:
        teacher, shifts = load_model(args.teacher), key_shifts(args.teacher_keys)
        log(f"# distilling {args.teacher} read in {args.teacher_keys} keys, weight {args.distill}")
    valid = load_grids(args.data, "valid")
    data = encoded(tokenizer, load_grids(args.data, "train") + valid[:args.valid_train], K, eos=True)
    val = valid[args.valid_train:]
    vals = [r["val_nll"] for r in state.history if "val_nll" in r]
    best = min(vals) if vals else np.inf
    minutes = state.history[-1].get("minutes", 0.0) if state.history else 0.0
    deadline = clock_deadline(args.until)
    stop, config, losses = _Stop(), state.config, []
    snapshots = collections.deque(maxlen=max(args.average, 1))
    if not args.resume:
        v, _ = validate(model, val)
        start = f"the weights of {args.init}" if model.params["cond_emb"].any() else "the JSB model, no condition read yet"
        log(f"{0.0:8.2f} {0:5d} {'':>10} {v:10.4f} {v:8.4f}   ({start})")
    t0 = time.perf_counter()
    while state.step < config.steps and not stop.requested and time.time() < deadline:
        inputs, targets, cond = batch(data, config, state.rng, tokenizer, K)
        soft = None if teacher is None else teacher_targets(teacher, shifts, inputs, targets, cond, args.distill)
        loss, grads = model.loss_and_grads(inputs, targets, workers=config.workers, rng=state.rng, condition=cond,
                                           soft=soft)
        if not np.isfinite(loss):
            log(f"# step {state.step + 1}: loss {loss}; stopped, the last good state is kept")
            return 1
        clip_grads(grads, config.grad_clip)
        if state.step < args.freeze_base:            # stage 1: only the condition table learns
            lr = args.cond_lr * min(1.0, (state.step + 1) / config.warmup)
            state.optimizer.step({"cond_emb": model.params["cond_emb"]}, grads, lr)
        else:                                         # stage 2: every weight, cosine from --lr
            stage = dataclasses.replace(config, steps=config.steps - args.freeze_base)
            state.optimizer.step(model.params, grads, lr_at(state.step - args.freeze_base, stage))
        state.step += 1
        losses.append(float(loss))
        if state.step % config.eval_every == 0 or state.step == config.steps:
            minutes += (time.perf_counter() - t0) / 60
            v, _ = validate(model, val)
            record = {"step": state.step, "loss": float(np.mean(losses)), "val_nll": v, "minutes": minutes}
            state.history.append(record)
            keep, note = model, ""
            if args.average:
                snapshots.append({k: value.copy() for k, value in model.params.items()})
                mean = Model(model.config, {k: np.mean([snap[k] for snap in snapshots], axis=0)
                                            for k in model.params}, tokenizer=tokenizer)
                v_mean, _ = validate(mean, val)
                note = f"   mean of the last {len(snapshots)}: {v_mean:.4f}"
                if v_mean < v:
                    keep, v = mean, v_mean
            if v < best:
                best = v
                save_checkpoint(output, keep.astype(np.float32),
                                metrics={"harmonizer_ahead": K, "validation_nats_per_cell": round(v, 6)})
            save_checkpoint(state_path, model, train_state=state.to_checkpoint())
            log(f"{minutes:8.2f} {state.step:5d} {record['loss']:10.4f} {record['val_nll']:10.4f} {best:8.4f}{note}")
            losses, t0 = [], time.perf_counter()
    save_checkpoint(state_path, model, train_state=state.to_checkpoint())
    log(f"# stopped at step {state.step}: best validation NLL {best:.4f} nats per lower-voice cell; "
        "--resume continues")
    return 0


def run_eval(args):
    model = load_model(args.output)
    held_out = load_grids(args.data, "valid")[args.valid_train:]
    v, n = validate(model, held_out)
    mixed = sum(parallel_map(lambda g: harmonization_nll(g, model=model, total=True)[0], held_out)) / n
    print(f"{args.output}: {v:.4f} nats per alto, tenor or bass cell given the soprano in one pass, "
          f"{mixed:.4f} read in {KEYS} keys ({n:,} cells, {len(held_out)} held-out validation chorales)")
    return 0


def main(argv=None):
    args = _parse(argv)
    return run_eval(args) if args.eval else run_training(args)


if __name__ == "__main__":
    sys.exit(main())
