"""Evaluation of a model on the corpus: validation NLL against n-gram baselines, and melody statistics.

- :func:`model_nll`: nats per token on whole sequences.  A sequence longer than
  the model's window is scored by the windows of :mod:`music_attn.runtime.windows`
  (``max_len`` tokens moved by half a window), each token scored once, with at least
  half a window of context, so long tunes are not cut into contextless pieces.
- :func:`ngram_nll`: interpolated Kneser-Ney baselines (:mod:`music_attn.training.ngram`)
  trained on the same training tokens, scored on the same tokens.
- :func:`generation_stats` / :func:`reference_stats`: for continuations of the
  first bars of validation melodies and for the real continuations, the share
  decoded without skipped tokens, the share of notes in the key of the prompt,
  pitch range and repetition (:mod:`music_attn.music.theory`).
"""

import json
from pathlib import Path

import numpy as np

from music_attn.runtime.generate import generate
from music_attn.training.ngram import KneserNeyLM
from music_attn.music.theory import estimate_key, in_key_share, pitch_range, repetition
from music_attn.runtime.windows import corpus_nll

__all__ = ["model_nll", "ngram_nll", "generation_stats", "reference_stats", "find_data_dir",
           "evaluate_shipped", "ABLATION_FILE"]

ABLATION_FILE = Path(__file__).resolve().parents[1] / "assets" / "ablation.json"


def model_nll(model, sequences, *, batch_size=16):
    """Mean NLL (nats/token) of every token after the first of each sequence; returns (nll, tokens).

    :func:`windows.corpus_nll` with windows of ``max_len`` tokens moved by half a window.
    """
    return corpus_nll(model, sequences, batch_size=batch_size)


def ngram_nll(train, validation, vocab_size, orders=(3, 4, 5)):
    """{order: validation NLL} of interpolated Kneser-Ney models fitted on ``train``."""
    return {n: KneserNeyLM(n, vocab_size).fit(train).nll(validation)[0] for n in orders}


# ------------------------------------------------------------------ melodies

def _bar_starts(ids, tokenizer):
    return np.flatnonzero(np.asarray(ids) == tokenizer.bar_id)


def _pitches(tokenizer, ids):
    """(pitches in onset order, durations, skipped) of ids, closed with EOS unless they are."""
    ids = np.asarray(ids)
    if ids.size == 0 or ids[-1] != tokenizer.eos_id:
        ids = np.append(ids, tokenizer.eos_id)
    result = tokenizer.decode(ids)
    notes = result.score.notes  # sorted by onset, then pitch
    return notes["pitch"].astype(np.int64), notes["end"] - notes["start"], result.skipped


def _split_prompt(ids, tokenizer, prompt_bars, bars):
    """(prompt ids, real continuation ids of ``bars`` bars) or None when the tune is too short."""
    starts = _bar_starts(ids, tokenizer)
    if len(starts) < prompt_bars + bars:
        return None
    cut = starts[prompt_bars]
    end = starts[prompt_bars + bars] if len(starts) > prompt_bars + bars else len(ids) - 1
    return ids[:cut], ids[cut:end]


def _row(pitches, key, decoded_ok):
    return {"ok": decoded_ok, "in_key": in_key_share(pitches, key), "range": pitch_range(pitches),
            "repetition": repetition(pitches), "notes": len(pitches)}


def _summarise(rows):
    def mean(key):
        values = [r[key] for r in rows if r["notes"] and not np.isnan(r[key])]
        return float(np.mean(values)) if values else float("nan")
    return {"n": len(rows), "decoded_ok": float(np.mean([r["ok"] for r in rows])),
            "in_key": mean("in_key"), "range": mean("range"), "repetition": mean("repetition"),
            "notes": mean("notes")}


def generation_stats(model, validation, *, seeds=100, prompt_bars=4, bars=8, temperature=1.0, top_p=0.95):
    """Continue the first ``prompt_bars`` bars of validation tunes (seed i -> tune i mod n) for ``bars`` bars."""
    tok = model.tokenizer
    prompts = [p for p in (_split_prompt(np.asarray(s), tok, prompt_bars, bars) for s in validation) if p]
    rows = []
    for seed in range(seeds):
        prompt, _ = prompts[seed % len(prompts)]
        out = generate(model, prompt, n_bars=bars, temperature=temperature, top_p=top_p,
                       rng=np.random.default_rng(seed))
        prompt_pitches, prompt_durations, _ = _pitches(tok, prompt)
        pitches, _, skipped = _pitches(tok, out.ids)
        key = estimate_key(prompt_pitches, prompt_durations)
        rows.append(_row(pitches[len(prompt_pitches):], key, skipped == 0))
    return _summarise(rows)


def reference_stats(tokenizer, validation, *, prompt_bars=4, bars=8):
    """The same statistics on the real bars that follow the prompts in the validation tunes."""
    rows = []
    for seq in validation:
        split = _split_prompt(np.asarray(seq), tokenizer, prompt_bars, bars)
        if split is None:
            continue
        prompt, real = split
        prompt_pitches, prompt_durations, _ = _pitches(tokenizer, prompt)
        pitches, _, skipped = _pitches(tokenizer, np.concatenate([prompt, real]))
        key = estimate_key(prompt_pitches, prompt_durations)
        pitches = pitches[len(prompt_pitches):]
        rows.append(_row(pitches, key, skipped == 0))
    return _summarise(rows)


# ------------------------------------------------------------------ report

def find_data_dir():
    """The corpus folder: ``data/`` beside the package (a source checkout) or in the working directory."""
    for candidate in (Path(__file__).resolve().parents[2] / "data", Path.cwd() / "data"):
        if (candidate / "MANIFEST.csv").is_file():
            return candidate
    return None


def evaluate_shipped(model, *, quick=False, data_dir=None):
    """Print validation NLL vs n-grams, generation statistics and the recorded ablation."""
    from music_attn.training.data import load_corpus

    data_dir = data_dir or find_data_dir()
    if data_dir is None:
        print("(no corpus folder data/ with MANIFEST.csv here: run from a source checkout to evaluate)")
        return None
    tok = model.tokenizer
    train = load_corpus(data_dir, tok, "train", progress=False)
    val = load_corpus(data_dir, tok, "validation", progress=False)
    if quick:
        train, val = train[:300], val[:40]
    nll, n = model_nll(model, val)
    grams = ngram_nll(train, val, tok.vocab_size)
    best = min(grams, key=grams.get)
    print(f"Validation NLL ({n:,} tokens of {len(val)} held-out tunes; n-grams fitted on {len(train)} training tunes)")
    print(f"  {'model':<34} {'nats/token':>10} {'perplexity':>11}")
    print(f"  {'transformer (shipped)':<34} {nll:>10.4f} {np.exp(nll):>11.2f}")
    for order, value in grams.items():
        print(f"  {f'{order}-gram interpolated Kneser-Ney':<34} {value:>10.4f} {np.exp(value):>11.2f}")
    print(f"  ratio transformer / best n-gram ({best}-gram): {nll / grams[best]:.3f}  (target <= 0.85)")
    gen = generation_stats(model, val, seeds=20 if quick else 100)
    ref = reference_stats(tok, val)
    print("\nMelodies: 8 bars after the first 4 bars of validation tunes (key = key of those 4 bars)")
    print(f"  {'':<24} {'n':>5} {'decoded ok':>10} {'in key':>7} {'range':>6} {'repetition':>10} {'notes':>6}")
    for label, s in (("generated (seeds)", gen), ("validation melodies", ref)):
        print(f"  {label:<24} {s['n']:>5} {s['decoded_ok']:>10.0%} {s['in_key']:>7.1%} {s['range']:>6.1f} "
              f"{s['repetition']:>10.2f} {s['notes']:>6.1f}")
    _print_ablation()
    return {"nll": nll, "ngram": grams, "generated": gen, "reference": ref}


def _print_ablation():
    if not ABLATION_FILE.is_file():
        return
    table = json.loads(ABLATION_FILE.read_text(encoding="utf-8"))
    print(f"\nPositional ablation (recorded by scripts/train_default.py --ablation; {table['budget']})")
    print(f"  {'positions':<12} {'val NLL':>8} {'perplexity':>11} {'train tok/s':>12}")
    for row in table["rows"]:
        print(f"  {row['positional']:<12} {row['val_nll']:>8.4f} {np.exp(row['val_nll']):>11.2f} "
              f"{row['tokens_per_s']:>12.0f}")
