"""The Music Transformer's JSB Chorales benchmark: validation NLL per token on the four-voice grid.

Run from the repository root (the data folder holds train.json and valid.json):

    # the committed checkpoint: a 512-token model, widened to 1,024 tokens, two more cosine
    # schedules from the last weights, then the weights averaged at a constant rate (see
    # docs/jsb_training.md); the four intermediate checkpoints these commands write are not
    # tracked in git (only their .log files are), the last command writes benchmarks/jsb_chorales.npz
    python scripts/jsb_chorales.py --data ../shared/data/jsb --train -o benchmarks/jsb_chorales_512.npz \
        --window 512 --period 0 --batch-size 4 --steps 2521 --seed 0
    python scripts/jsb_chorales.py --data ../shared/data/jsb --train -o benchmarks/jsb_chorales_stage2.npz \
        --init benchmarks/jsb_chorales_512.npz --steps 7000 --lr 6e-4 --warmup 100 --seed 0
    python scripts/jsb_chorales.py --data ../shared/data/jsb --train -o benchmarks/jsb_chorales_stage3.npz \
        --init benchmarks/jsb_chorales_stage2.npz --steps 10000 --lr 4e-4 --warmup 200 --seed 1 --patience 0
    python scripts/jsb_chorales.py --data ../shared/data/jsb --train -o benchmarks/jsb_chorales_stage4.npz \
        --init benchmarks/jsb_chorales_stage3.npz --steps 6000 --lr 2e-4 --warmup 100 --seed 2 --patience 0
    python scripts/jsb_chorales.py --data ../shared/data/jsb --train --init benchmarks/jsb_chorales_stage4.npz \
        --steps 4500 --lr 1.5e-4 --min-lr 1.5e-4 --warmup 100 --seed 3 --patience 0 --average-from 500
    python scripts/jsb_chorales.py --data ../shared/data/jsb --train --resume   # continue a run
    python scripts/jsb_chorales.py --data ../shared/data/jsb --eval --transpositions 2   # the table

Each chorale is the grid of sixteenth-note steps, serialized soprano, alto,
tenor, bass at each step (:class:`music_attn.GridTokenizer`): ``[BOS]`` then
4 tokens per step.  The NLL counted is that of every grid token (``ids[1:]``),
the figure Huang et al. (ICLR 2019) report (best: 0.335 nats per token).

Training: the train split only, with transposition augmentation (-5..+5
semitones, within the pitch range of the data) and dropout; the validation split
is used for early stopping only (the best checkpoint by validation NLL is
kept; with ``--average-from``, the best running mean of the weights).  Validation reads each chorale with :func:`music_attn.runtime.windows.sequence_nll`:
windows of the model's ``max_len`` tokens moving by ``--stride``, so a chorale
that fits the window is predicted with all of itself before each token, and a
longer one with at least ``max_len - stride`` tokens of context.

Files: ``--output`` (default benchmarks/jsb_chorales.npz) is the best model,
weights only in float32; ``<output>.state.npz`` the last full training state
(exact resume, not committed); ``<output>.average.npz`` the running mean of the
weights with ``--average-from`` (float64, not committed); ``<output minus .npz>.log``
validation NLL against training time.
"""

import argparse
import dataclasses
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

from music_attn.core.model import POSITIONALS, ModelConfig, init_model, parallel_map
from music_attn.music.tokenizers import STEPS_PER_BEAT, GridTokenizer, grid_notes
from music_attn.music import constants as K
from music_attn.runtime.checkpoint import load_checkpoint, load_model, save_checkpoint
from music_attn.training.data import pitch_table
from music_attn.training.ngram import KneserNeyLM
from music_attn.training.train import TrainConfig, TrainState, clock_deadline, train, train_state_from_checkpoint
from music_attn.runtime.windows import sequence_nll

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "benchmarks" / "jsb_chorales.npz"
PAPER_NLL = 0.335          # Huang et al. 2019, Table 1: Music Transformer, relative attention
SECONDS_PER_STEP = 60.0 / K.DECODE_TEMPO_BPM / STEPS_PER_BEAT   # a sixteenth at 120 bpm: 0.125 s

# Sized for 2 shared cores (600 to 2,500 training tokens/s, depending on the other
# load). The window of 1,024 tokens (256 sixteenths = 16 bars of 4/4) holds two
# chorales in three whole (the median is 865 tokens), so a repeated first section is
# in view when it returns. ``period=16`` adds a learned embedding of the position
# modulo 16: which voice a token is, and which sixteenth of the beat.
MODEL = dict(d_model=128, n_layers=4, n_heads=4, d_ff=512, max_len=1024,
             positional="relative", attention="full", dropout=0.1, period=16)
TRAIN = TrainConfig(steps=2000, batch_size=2, seq_len=1024, lr=1e-3, min_lr=5e-5, warmup=50,
                    weight_decay=0.05, grad_clip=1.0, eval_every=0, checkpoint_every=0,
                    transpose=(-5, 6), seed=0, workers=2)
EVAL_EVERY = 100           # optimizer steps between validations
PATIENCE = 8               # validations without improvement before stopping early
STRIDE = 256               # evaluation stride (tokens): context >= max_len - stride
SELECTION_STRIDE = None    # validations during training read each token once (stride = window)


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder with train.json and valid.json")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--train", action="store_true", help="train (default: --eval)")
    mode.add_argument("--eval", action="store_true", help="print the validation table of --output")
    p.add_argument("-o", "--output", default=str(OUTPUT), help="best checkpoint (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run saved next to --output")
    p.add_argument("--minutes", type=float,
                   help="training time budget: sets the number of steps of a new run (default 60) and "
                        "stops any run past 1.1x of it (default: no limit with --steps or --resume)")
    p.add_argument("--steps", type=int, help="fix the number of steps (default: fit the budget); with "
                   "--resume, lengthen a run of constant learning rate")
    p.add_argument("--patience", type=int, default=PATIENCE, metavar="N",
                   help="stop after N validations (every %d steps) without a new best; 0 = never "
                        "(a warm restart from --init first rises; default %%(default)s)" % EVAL_EVERY)
    p.add_argument("--stop-after", type=int, metavar="STEP",
                   help="stop at this step without changing the schedule (reproduces a run cut short)")
    p.add_argument("--until", metavar="HH:MM", help="also stop by this clock time (UTC): the budget "
                                                     "becomes the smaller of --minutes and the time left")
    p.add_argument("--positional", choices=POSITIONALS, default=MODEL["positional"])
    p.add_argument("--dropout", type=float, default=MODEL["dropout"])
    p.add_argument("--window", type=int, default=MODEL["max_len"],
                   help="the model's window and the training length in tokens (default %(default)s)")
    p.add_argument("--period", type=int, default=MODEL["period"],
                   help="period of the learned position embedding (0 = none; default %(default)s)")
    p.add_argument("--batch-size", type=int, default=TRAIN.batch_size, help="default %(default)s")
    p.add_argument("--lr", type=float, default=TRAIN.lr, help="peak learning rate (default %(default)s)")
    p.add_argument("--warmup", type=int, default=TRAIN.warmup, help="default %(default)s")
    p.add_argument("--min-lr", type=float, default=TRAIN.min_lr,
                   help="learning rate at the end of the cosine (= --lr: constant; default %(default)s)")
    p.add_argument("--average-from", type=int, metavar="STEP",
                   help="stochastic weight averaging: from this step on, fold the weights into their "
                        "running mean after every %d steps, and validate and keep that mean" % EVAL_EVERY)
    p.add_argument("--init", metavar="NPZ", help="start from this JSB checkpoint's weights instead of "
                   "random ones: a longer window extends its relative tables (the new, longer "
                   "distances start at 0) and a new period table starts at 0")
    p.add_argument("--stride", type=int, default=STRIDE, help="evaluation stride in tokens")
    p.add_argument("--seed", type=int, default=TRAIN.seed)
    p.add_argument("--no-ngram", action="store_true", help="--eval without the n-gram baselines")
    p.add_argument("--transpositions", type=int, default=0, metavar="K",
                   help="--eval also scores the mixture of the model read at every transposition "
                        "-K..+K (an extra row; default 0 = off)")
    p.add_argument("--record", action="store_true",
                   help="--eval also stores the validation NLL in the checkpoint's metrics (inspect reads it)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- data

def load_split(folder, split, tokenizer):
    """(token id arrays ``[BOS] + 4 S``, grids) of ``train`` or ``valid``."""
    path = Path(folder) / f"{split}.json"
    grids = [np.asarray(c, dtype=np.int64).reshape(-1, 4) for c in json.loads(path.read_text())]
    return [tokenizer.encode_grid(g).ids for g in grids], grids


def validation_nll(model, sequences, stride):
    """Summed NLL (nats) of every grid token and their count."""
    window = model.config.max_len
    stride = window if stride is None else min(stride, window)
    nll = parallel_map(lambda ids: sequence_nll(model, ids, window=window, stride=stride),
                       sequences)                      # chorales in parallel, BLAS single-threaded
    return float(sum(x.sum() for x in nll)), int(sum(x.size for x in nll))


def mixture_nll(model, ids, shifts, window, stride):
    """NLL (nats) of each grid token under the uniform mixture of the model read at ``shifts``.

    Component ``s`` reads the chorale transposed by ``s`` semitones and gives the target
    the probability of its transposed token. It takes part in a prediction only while
    every pitch before the target fits the vocabulary after the shift (a condition on the
    past alone, so the mixture is a proper sequential model), and gives probability 0 to
    a target it cannot spell. Shift 0 always takes part.
    """
    pitch = pitch_table(model.tokenizer)[ids]                 # (T,), -1 for rests and specials
    lo, hi = model.tokenizer.pitch_range
    logp, used = [], []
    for s in shifts:
        fits = (pitch < 0) | ((pitch + s >= lo) & (pitch + s <= hi))                 # (T,)
        moved = np.where((pitch >= 0) & fits, ids + s, ids)      # pitch ids are contiguous
        lp = -sequence_nll(model, moved, window=window, stride=stride)              # (T-1,)
        logp.append(np.where(fits[1:], lp, -np.inf))
        used.append(np.logical_and.accumulate(fits)[:-1])        # the context fits
    logp, used = np.array(logp), np.array(used)                  # (K, T-1)
    logp = np.where(used, logp, -np.inf)
    top = logp.max(axis=0)
    return -(top + np.log(np.exp(logp - top).sum(axis=0)) - np.log(used.sum(axis=0)))


# --------------------------------------------------------------------------- training

def _paths(output):
    output = Path(output)
    return output, output.with_suffix(".state.npz"), output.with_suffix(".log")


def _fresh(args, tokenizer, train_seqs, log):
    """A new model and TrainState whose step count fits ``--minutes``."""
    rng = np.random.default_rng(args.seed)
    config = ModelConfig(vocab_size=tokenizer.vocab_size,
                         **{**MODEL, "positional": args.positional, "dropout": args.dropout,
                            "max_len": args.window, "period": args.period})
    model = init_model(config, rng, tokenizer=tokenizer)
    if args.init:
        _load_weights(model, args.init)
    tconf = dataclasses.replace(TRAIN, seed=args.seed, batch_size=args.batch_size, seq_len=args.window,
                                lr=args.lr, min_lr=args.min_lr, warmup=args.warmup)
    steps = args.steps or _calibrated_steps(model, train_seqs, args.minutes, tconf)
    tconf = dataclasses.replace(tconf, steps=steps)
    budget = f"budget {args.minutes:.1f} min of training" if np.isfinite(args.minutes) else "no time budget"
    log(f"# {budget}: {steps} steps; started "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    if args.init:
        log(f"# weights from {args.init}")
    log(f"# {model!r}\n# {json.dumps(config.to_dict())}\n# {json.dumps(tconf.to_dict())}")
    return model, TrainState(model, tconf, rng)


def _load_weights(model, path):
    """Copy a JSB checkpoint's weights into ``model`` (same sizes; its window may be shorter)."""
    source = load_model(path)
    mine, theirs = model.config, source.config
    if (theirs.d_model, theirs.n_layers, theirs.n_heads, theirs.d_ff, theirs.positional) != \
            (mine.d_model, mine.n_layers, mine.n_heads, mine.d_ff, mine.positional) \
            or theirs.max_len > mine.max_len or theirs.vocab_size != mine.vocab_size:
        raise SystemExit(f"error: {path} is not a smaller-window version of this model")
    for name, value in model.params.items():
        if name == "period_emb" and theirs.period != mine.period:
            value[...] = 0.0                                   # a new table: no effect at first
        elif name.endswith("attn.rel"):                        # (H, L, D), row L-1 = distance 0
            value[...] = 0.0
            value[:, mine.max_len - theirs.max_len:] = source.params[name]
        else:
            value[...] = source.params[name]


def _average_path(output):
    return Path(output).with_suffix(".average.npz")


def _averaged(path):
    """The running mean of the weights (float64) and its metrics, or (None, {})."""
    if not path.is_file():
        return None, {}
    model = load_checkpoint(path).model
    return model, dict(model.metrics)


def fold(mean, model, count):
    """Fold ``model``'s weights into ``mean``, the mean of ``count`` earlier snapshots
    (in place); returns the new count."""
    for name, value in mean.params.items():
        value += (model.params[name] - value) / (count + 1)
    return count + 1


def _calibrated_steps(model, train_seqs, minutes, tconf):
    """Steps that fit the budget, timed on a throw-away copy (validation takes ~15% of it)."""
    probe = model.astype(model.dtype)
    config = dataclasses.replace(tconf, steps=3)
    train(probe, train_seqs, config, progress=False)
    t0 = time.perf_counter()
    train(probe, train_seqs, config, progress=False)
    per_step = (time.perf_counter() - t0) / 3
    steps = max(int(minutes * 60 * 0.85 / per_step), EVAL_EVERY)
    print(f"{per_step:.2f} s/step ({tconf.batch_size * tconf.seq_len / per_step:,.0f} tokens/s): "
          f"{steps} steps in {minutes:g} min")
    return steps


def _resumed(state_path, steps=None):
    """The saved model and TrainState; ``steps`` lengthens a run of constant learning rate."""
    ckpt = load_checkpoint(state_path)
    config = TrainConfig.from_dict(ckpt.train_state["meta"]["config"])
    if steps is not None and steps != config.steps:
        if config.lr != config.min_lr:
            raise SystemExit("error: --steps with --resume changes a cosine schedule; only a run at a "
                             "constant learning rate (--min-lr equal to --lr) can be lengthened")
        config = dataclasses.replace(config, steps=steps)
    return ckpt.model, train_state_from_checkpoint(ckpt.model, ckpt.train_state, config)


def _best_so_far(history):
    vals = [r["val_nll"] for r in history if "val_nll" in r]
    return min(vals) if vals else np.inf, len(vals) - 1 - int(np.argmin(vals)) if vals else 0


def run_training(args):
    """Train in chunks of EVAL_EVERY steps; validate, log and keep the best after each."""
    output, state_path, log_path = _paths(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)

    def log(line):
        print(line, flush=True)
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    deadline = clock_deadline(args.until)
    if args.minutes is None:
        args.minutes = np.inf if (args.steps or args.resume) else 60.0
    args.minutes = min(args.minutes, 0.85 * (deadline - time.time()) / 60)
    tokenizer = GridTokenizer()
    train_seqs = [np.append(ids, tokenizer.eos_id) for ids in load_split(args.data, "train", tokenizer)[0]]
    val_seqs, _ = load_split(args.data, "valid", tokenizer)
    average_path = _average_path(output)
    if args.resume:
        model, state = _resumed(state_path, args.steps)
        log(f"# resumed at step {state.step}")
        mean, info = _averaged(average_path)
    else:
        model, state = _fresh(args, tokenizer, train_seqs, log)
        mean, info = None, {}
        average_path.unlink(missing_ok=True)            # a new run: no mean from an older one
        if args.average_from is not None:
            mean, info = model.astype(np.float64), {"averaged_from": args.average_from, "snapshots": 0}
            save_checkpoint(average_path, mean, metrics=info)
            log(f"# stochastic weight averaging: the weights after every {EVAL_EVERY} steps from step "
                f"{args.average_from} on are averaged; val_nll is the mean's, raw_val_nll the last weights'")
        log("# minutes  step  tokens_seen  train_loss  val_nll  best_val_nll"
            + ("  raw_val_nll" if mean is not None else ""))
    best, stale = _best_so_far(state.history)
    minutes = state.history[-1].get("minutes", 0.0) if state.history else 0.0
    chunk = 0.0        # wall seconds of the last train + validate round
    end = min(state.config.steps, args.stop_after or state.config.steps)
    patience = args.patience or np.inf
    while (state.step < end and stale < patience and minutes < 1.1 * args.minutes
           and time.time() + chunk < deadline):
        t0 = time.perf_counter()
        state = train(model, train_seqs, state.config, state=state, tokenizer=tokenizer,
                      stop_after=min(state.step + EVAL_EVERY, end), progress=False)
        minutes += (time.perf_counter() - t0) / 60
        candidate, raw = model, ""
        if mean is not None and state.step >= info["averaged_from"]:
            info["snapshots"] = fold(mean, model, info["snapshots"])
            save_checkpoint(average_path, mean, metrics=info)
            candidate = mean.astype(model.dtype)
            total, count = validation_nll(model, val_seqs, SELECTION_STRIDE)
            raw = f" {total / count:8.4f}"
        total, count = validation_nll(candidate, val_seqs, SELECTION_STRIDE)
        val = total / count
        stale = 0 if val < best else stale + 1
        if val < best:
            best = val
            save_checkpoint(output, candidate)
        record = state.history[-1]
        record.update(val_nll=val, minutes=minutes)
        save_checkpoint(state_path, model, train_state=state.to_checkpoint())
        seen = state.step * state.config.batch_size * state.config.seq_len
        log(f"{minutes:8.2f} {state.step:5d} {seen:12,d} {record['loss']:10.4f} {val:8.4f} {best:8.4f}{raw}")
        chunk = time.perf_counter() - t0
        if state.interrupted:
            return 130
    why = " (stopped early)" if stale >= patience else "" if state.step == state.config.steps else " (budget)"
    log(f"# stopped at step {state.step}{why}: best validation NLL {best:.4f} nats/token "
        f"(stride {SELECTION_STRIDE or model.config.max_len}); --resume continues")
    return 0


# --------------------------------------------------------------------------- evaluation

def run_eval(args):
    """The validation table: the model, n-grams on the same tokens, the paper."""
    model = load_model(args.output)
    tokenizer = model.tokenizer
    train_seqs, _ = load_split(args.data, "train", tokenizer)
    val_seqs, val_grids = load_split(args.data, "valid", tokenizer)
    notes = sum(len(grid_notes(g)[0]) for g in val_grids)
    seconds = sum(len(g) for g in val_grids) * SECONDS_PER_STEP
    stride = min(args.stride, model.config.max_len)
    t0 = time.perf_counter()
    total, count = validation_nll(model, val_seqs, stride)
    print(f"{len(val_seqs)} validation chorales, {count:,} grid tokens, {notes:,} notes "
          f"(a note = a run of one pitch in one voice), {seconds:,.0f} s of music at "
          f"{K.DECODE_TEMPO_BPM:g} bpm (a sixteenth = {SECONDS_PER_STEP} s)")
    print(f"model: {model!r}\nwindow {model.config.max_len} tokens, evaluation stride {stride} "
          f"(every token sees the whole chorale before it, or at least "
          f"{model.config.max_len - stride} tokens); scored in {time.perf_counter() - t0:.0f} s\n")
    rows = [("this model", total)]
    if args.transpositions:
        k = args.transpositions
        pitches = pitch_table(tokenizer)
        assert np.all(np.diff(pitches[pitches >= 0]) == 1), "pitch ids must be contiguous"
        nll = parallel_map(lambda ids: mixture_nll(model, ids, range(-k, k + 1),
                                                   model.config.max_len, stride), val_seqs)
        rows.append((f"mixture of {2 * k + 1} keys", float(sum(x.sum() for x in nll))))
    if not args.no_ngram:
        train_eos = [np.append(ids, tokenizer.eos_id) for ids in train_seqs]
        for order in (5, 9):
            kn = KneserNeyLM(order, tokenizer.vocab_size).fit(train_eos)
            rows.append((f"Kneser-Ney {order}-gram", kn.nll(val_seqs)[0] * count))
    print(f"{'':<22}{'nats/token':>11}{'nats/note':>11}{'nats/second':>13}")
    for name, nll in rows:
        print(f"{name:<22}{nll / count:>11.4f}{nll / notes:>11.3f}{nll / seconds:>13.3f}")
    print(f"{'Music Transformer':<22}{PAPER_NLL:>11.4f}{'':>11}{'':>13}   (Huang et al. 2019)")
    if args.record:
        metrics = {**model.metrics, "validation_nats_per_token": round(total / count, 6),
                   "validation_tokens": count, "validation_sequences": len(val_seqs)}
        save_checkpoint(args.output, model, metrics=metrics)
        print(f"recorded the validation NLL in {args.output}")
    return 0


def main(argv=None):
    args = _parse(argv)
    return run_training(args) if args.train else run_eval(args)


if __name__ == "__main__":
    sys.exit(main())
