"""Sampling continuations: temperature, top-k, top-p, the tokenizer's grammar, the KV cache.

``generate`` primes a KV cache with the prompt, then samples one token at a
time (nanoGPT's recipe: crop, temperature, top-k, softmax, top-p, sample,
append).  With ``constrained=True`` (the default) every token the tokenizer's
grammar forbids at that point gets probability zero before sampling, so the
result always decodes with zero skipped tokens.

Shape legend: V vocab.
"""

import copy
import os
from typing import NamedTuple

import numpy as np

from music_attn._threads import single_threaded_blas
from music_attn.errors import MusicAttnError
from music_attn.core.ops import softmax_
from music_attn.runtime.windows import alignment, window_start

__all__ = ["next_token_distribution", "sample_next", "generate", "Generated"]


def next_token_distribution(logits, temperature=1.0, top_k=None, top_p=None, *, allowed=None):
    """The distribution ``sample_next`` draws from.

    Parameters
    ----------
    logits : (V,) next-token logits, or (N, V): one distribution per row.
    temperature : float >= 0; 0 puts all the mass on the (allowed) argmax.
    top_k : keep only the k most likely tokens (exactly k, ties broken by id).
    top_p : keep the smallest set of most likely tokens whose mass reaches top_p.
    allowed : optional bool (V,) or (N, V), tokens that may be sampled at all.

    Returns
    -------
    probs : (V,) or (N, V) float64, each row sums to 1.
    """
    logits = np.array(logits, dtype=np.float64)
    rows = logits.reshape(-1, logits.shape[-1])                      # (N, V)
    if np.isnan(rows).any() or np.isposinf(rows).any():
        raise MusicAttnError("the model's next-token scores are not finite numbers (its weights overflow); "
                             "it cannot be sampled")
    if allowed is not None:                                          # 1. forbidden tokens
        allowed = np.asarray(allowed, dtype=bool)
        if allowed.shape != logits.shape:
            allowed = np.broadcast_to(allowed, logits.shape)
        np.copyto(rows, -np.inf, where=~allowed.reshape(rows.shape))
    if not np.logical_or.reduce(np.isfinite(rows), axis=-1).all():
        raise ValueError("no token may be sampled: every logit is -inf or masked")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:                                             # 2. greedy
        probs = np.zeros_like(rows)
        probs[np.arange(len(rows)), np.argmax(rows, axis=-1)] = 1.0
        return probs.reshape(logits.shape)
    if temperature != 1:                                             # 3. temperature
        rows /= temperature
    if top_k is not None:                                            # 4. top-k
        rows = _keep_top_k(rows, int(top_k))
    probs = softmax_(rows)                                           # 5. softmax
    if top_p is not None:                                            # 6. nucleus
        probs = _keep_top_p(probs, float(top_p))
    return probs.reshape(logits.shape)


def _keep_top_k(logits, k):
    """(N, V) logits with all but the k largest of each row set to -inf (ties: lower id)."""
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    if k >= logits.shape[-1]:
        return logits
    order = np.argsort(-logits, axis=-1, kind="stable")[:, :k]      # most likely first
    out = np.full_like(logits, -np.inf)
    np.put_along_axis(out, order, np.take_along_axis(logits, order, -1), -1)
    return out


def _keep_top_p(probs, p):
    """(N, V) probabilities restricted to the smallest most-likely set of mass >= p, renormalised."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {p}")
    order = np.argsort(-probs, axis=-1, kind="stable")              # most likely first
    sorted_p = np.take_along_axis(probs, order, -1)
    mass_before = np.cumsum(sorted_p, axis=-1) - sorted_p
    kept = np.where(mass_before < p, sorted_p, 0.0)                 # until the mass reaches p
    out = np.zeros_like(probs)
    np.put_along_axis(out, order, kept, -1)
    return out / out.sum(axis=-1, keepdims=True)


def _draw(probs, uniforms):
    """Inverse-CDF draw of one token per row: probs (N, V), uniforms (N,) in [0, 1) -> (N,) int."""
    cdf = np.cumsum(probs, axis=-1)                                  # (N, V)
    total = cdf[:, -1:]                                              # (N, 1)
    tokens = np.add.reduce(cdf <= uniforms[:, None] * total, axis=-1)
    last = np.add.reduce(cdf < total, axis=-1)                       # the last token with mass
    return np.minimum(tokens, last)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, rng=None, *, allowed=None):
    """Sample the next token id from ``logits`` (V,).

    ``temperature=0`` is greedy (argmax among the allowed tokens) and needs no
    ``rng``; otherwise ``rng`` (np.random.Generator) is required.  See
    :func:`next_token_distribution` for the other arguments.
    """
    logits = np.asarray(logits).reshape(1, -1)
    allowed = None if allowed is None else np.asarray(allowed).reshape(1, -1)
    return int(_sample_rows(logits, (temperature, top_k, top_p), [rng], allowed)[0])


def _sample_rows(logits, sampling, rngs, allowed):
    """One token per row of logits (N, V); row i draws from ``rngs[i]`` (one number per token)."""
    temperature, top_k, top_p = sampling
    probs = next_token_distribution(logits, temperature, top_k, top_p, allowed=allowed)  # (N, V)
    if temperature == 0:
        return np.argmax(probs, axis=-1)
    if any(rng is None for rng in rngs):
        raise ValueError("sampling with temperature > 0 needs an np.random.Generator (rng=...)")
    return _draw(probs, np.array([rng.random() for rng in rngs]))


class Generated(NamedTuple):
    """A generated sequence.

    ids : (n,) int32, the prompt (without a trailing EOS) followed by the new tokens.
    prompt_length : number of prompt tokens at the start of ``ids``.
    stop : why generation stopped: "eos", "bars" or "tokens".
    bars : number of bars the new tokens start (Bar tokens written; 0 for tokenizers
        without bars).
    """
    ids: np.ndarray
    prompt_length: int
    stop: str
    bars: int = 0


def _prompt(prompt_ids, tokenizer):
    """The prompt as int32 (n,), without trailing EOS/PAD; [BOS] when empty.

    A music file (a path, ``mido.MidiFile``, ``pretty_midi.PrettyMIDI`` or Score) is
    refused with a TypeError that points to :func:`continue_midi`, which reads it.
    """
    if isinstance(prompt_ids, (str, bytes, os.PathLike)) or hasattr(prompt_ids, "tracks") or \
            hasattr(prompt_ids, "instruments") or hasattr(prompt_ids, "ticks_per_beat"):
        shown = os.fsdecode(prompt_ids) if isinstance(prompt_ids, (str, bytes, os.PathLike)) else type(prompt_ids).__name__
        raise TypeError(f"generate() continues token ids, not a music file ({shown!r}): to continue a MIDI "
                        f"file from Python, call music_attn.continue_midi(path, model=model, bars=8), which "
                        f"reads, encodes, samples and decodes it (then .write('out.mid')); or pass "
                        f"model.tokenizer.encode(path).ids")
    if hasattr(prompt_ids, "ids") and hasattr(prompt_ids, "note_of_token"):       # a TokenSequence
        prompt_ids = prompt_ids.ids
    ids = np.asarray([] if prompt_ids is None else prompt_ids, dtype=np.int64).reshape(-1)
    if tokenizer is not None:
        while ids.size and ids[-1] in (tokenizer.eos_id, tokenizer.pad_id):
            ids = ids[:-1]
        if ids.size == 0:
            ids = np.array([tokenizer.bos_id])
    if ids.size == 0:
        raise ValueError("generate needs a non-empty prompt when the model has no tokenizer")
    return ids.astype(np.int32)


def _context(prompt, max_len, max_new_tokens):
    """Crop a long prompt to its last tokens, leaving room to generate."""
    room = max_len // 2 if max_new_tokens is None else min(max_new_tokens, max_len // 2)
    keep = max(max_len - room, 1)
    return prompt[-keep:] if len(prompt) > keep else prompt


def _primed_grammar(tokenizer, prompt):
    """The grammar state after the prompt (illegal prompt tokens are passed over)."""
    grammar = tokenizer.grammar()
    for token in prompt:
        grammar.step(int(token))
    if grammar.done:
        raise ValueError("the prompt is already finished (it contains EOS)")
    return grammar


class _Stepper:
    """Next-token logits (N, V) of N sequences growing in step, with or without the KV cache.

    When the window the model can see (``max_len``) is full, it slides to the next
    start of :func:`windows.window_start` (stride ``max_len // 2``): the tokens from
    there are fed again from an empty cache, so generation can go on for as long as
    asked, each token seeing at least half a window of context.
    """

    def __init__(self, model, context, n, use_cache):
        self.model, self.use_cache, self.n = model, use_cache, n
        self.offset = 0                                    # position of seq[:, 0] in the whole
        context = np.asarray(context, dtype=np.int64)[None, :]                    # (1, T)
        self.seq = np.repeat(context, n, axis=0)                                  # (N, T)
        # the N sequences start as one prompt: run it once and copy its keys and values
        cache = model.new_cache(1) if use_cache else None
        self.logits = np.repeat(model.forward(context, cache=cache)[:, -1], n, axis=0)   # (N, V)
        self.cache = cache if cache is None or n == 1 else cache.repeat(n)

    def _restart(self, window):
        self.seq = window
        if self.cache is not None:
            self.cache.reset()
        self.logits = self.model.forward(self.seq, cache=self.cache)[:, -1]      # (N, V)

    def push(self, tokens):
        """Append ``tokens`` (N,) and compute the logits after them."""
        L = self.model.config.max_len
        self.seq = np.concatenate([self.seq, np.asarray(tokens, np.int64)[:, None]], axis=1)
        position = self.offset + self.seq.shape[1] - 1
        start = window_start(position, L, align=alignment(self.model)) if self.seq.shape[1] > L else self.offset
        if start != self.offset:
            self.seq, self.offset = self.seq[:, start - self.offset:], start
            self._restart(self.seq)
        elif self.use_cache:
            self.logits = self.model.decode(self.seq[:, -1], self.cache)               # (N, V)
        else:
            self.logits = self.model.forward(self.seq)[:, -1]


def _rngs(rng, num_samples):
    """One Generator per sample: a sequence of them as given, or children seeded from ``rng``."""
    if num_samples is None:
        return [rng]
    if isinstance(rng, np.random.Generator):
        return [np.random.default_rng(seed) for seed in rng.integers(0, 2 ** 63, num_samples)]
    rngs = [None] * num_samples if rng is None else list(rng)
    if len(rngs) != num_samples:
        raise ValueError(f"num_samples={num_samples} needs as many generators, got {len(rngs)}")
    return rngs


def generate(model, prompt_ids=None, *, max_new_tokens=None, n_bars=None, temperature=1.0,
             top_k=None, top_p=None, rng=None, constrained=True, tokenizer=None, use_cache=True,
             no_end=False, num_samples=None, progress=None, one_line=False, form=None):
    """Continue ``prompt_ids`` by sampling from ``model``.

    Parameters
    ----------
    model : Model.
    prompt_ids : int ids to continue (a trailing EOS is dropped), or a TokenSequence;
        None or empty starts from BOS.  A MIDI file is refused (TypeError): continue
        one with :func:`music_attn.runtime.continue_midi.continue_midi`.  A prompt too long for ``max_len`` is cropped to its
        last tokens for the model (the grammar still reads all of it).
    max_new_tokens : stop after this many new tokens.  Default: ``max_len``
        without ``n_bars``, ``n_bars * max_len`` with it (a bound, should the
        model never close a bar).
    n_bars : stop before the Bar token that would start bar ``n_bars + 1`` (REMI).
    temperature, top_k, top_p : see :func:`next_token_distribution`.
    rng : np.random.Generator (needed unless temperature is 0); with
        ``num_samples``, a sequence of one Generator per sample, or one Generator
        that seeds a child Generator per sample.
    constrained : mask tokens the tokenizer's grammar forbids before sampling.
    tokenizer : defaults to ``model.tokenizer``.
    use_cache : use the KV cache (False recomputes the whole prefix every step).
    no_end : forbid EOS until ``n_bars`` bars are written (always, without ``n_bars``),
        so the piece runs to its budget.
    num_samples : sample this many continuations at once (one batch through the
        model), each with its own grammar state, stop condition and generator;
        sample i is what a single run with generator i gives.
    progress : show progress on stderr (tokens, bars) once sampling has taken 2 s: None
        (default) on a terminal only, True also in a log (plain lines), False never.
    one_line : continue one note at a time (no chords, no note before the last one
        ends): the grammar's ``one_line`` option, from the end of the prompt on.
    form : a :class:`~music_attn.runtime.form.Form` (start at a bar line, close on the
        tonic); needs ``constrained``.

    Returns
    -------
    Generated(ids, prompt_length, stop, bars), or a list of ``num_samples`` of them:
    generation also stops at EOS; past ``max_len`` tokens the model's window slides
    (see ``_Stepper``); a note left unfinished by a budget is dropped, so
    constrained output always decodes with 0 skipped.
    """
    tokenizer = model.tokenizer if tokenizer is None else tokenizer
    if constrained and tokenizer is None:
        raise ValueError("grammar-constrained generation needs a tokenizer")
    num_samples = _count("num_samples", num_samples, 1)
    max_new_tokens = _count("max_new_tokens", max_new_tokens, 0)
    n_bars = _count("n_bars", n_bars, 1)
    if max_new_tokens is None:
        max_new_tokens = model.config.max_len * (1 if n_bars is None else n_bars)
    _check_sampling(temperature, top_k, top_p)
    prompt = _prompt(prompt_ids, tokenizer)
    rngs = _rngs(rng, num_samples)
    primed = _primed_grammar(tokenizer, prompt) if constrained else None
    if (one_line or form is not None) and not hasattr(primed, "one_line"):
        raise ValueError("one_line and form need grammar-constrained REMI tokens")
    if one_line:
        primed.one_line = True              # after the prompt: its own chords stay as they are
    context = _context(prompt, model.config.max_len, max_new_tokens)
    history = _bars_of(prompt, tokenizer) if form is not None and form.repeat else None
    out, batch = [], batch_size(model, len(rngs))
    with _progress(progress, max_new_tokens * -(-len(rngs) // batch)) as bar:
        for lo in range(0, len(rngs), batch):         # memory bounded whatever num_samples is
            chunk = rngs[lo:lo + batch]
            samples = [_Sample(primed, tokenizer, n_bars, no_end, form, rng=r, history=history) for r in chunk]
            with single_threaded_blas(), np.errstate(over="ignore", invalid="ignore"):   # overflow: refused below
                stepper = _Stepper(model, context, len(chunk), use_cache)
                _sample_loop(stepper, samples, max_new_tokens, (temperature, top_k, top_p), chunk, bar)
            out += [s.result(prompt) for s in samples]
    return out[0] if num_samples is None else out


MAX_BATCH = 256        # samples through the model at once, at most


def batch_size(model, n):
    """How many of ``n`` samples go through the model at once: what the memory budget holds
    (:mod:`music_attn._budget`; KV cache, a window's activations, a grammar each), at most MAX_BATCH."""
    from music_attn._budget import memory_budget
    c = model.config
    per_sample = 8 * c.max_len * (2 * c.n_layers * c.d_model + 4 * c.d_ff + 2 * c.n_heads * c.max_len) + 2**16
    return int(max(1, min(n, MAX_BATCH, memory_budget() // (2 * per_sample))))


def _check_sampling(temperature, top_k, top_p):
    """TypeError/ValueError for sampling settings no sampler could use (what the CLI options refuse)."""
    import numbers
    if not isinstance(temperature, numbers.Real) or isinstance(temperature, bool):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and (not isinstance(top_k, numbers.Integral) or isinstance(top_k, bool)):
        raise TypeError(f"top_k must be an integer, got {_brief(top_k)}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and (not isinstance(top_p, numbers.Real) or isinstance(top_p, bool)):
        raise TypeError(f"top_p must be a number, got {_brief(top_p)}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")


def _count(name, value, low):
    """``value`` as an int >= ``low`` (None stays None); TypeError/ValueError otherwise."""
    import numbers
    if value is None:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {_brief(value)}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _brief(value):
    from music_attn.errors import shorten
    return shorten(repr(value), 80)


def _bars_of(ids, tokenizer):
    """The token lists of the bars of ``ids`` (what follows each Bar token, up to the next)."""
    bars = []
    for token in np.asarray(ids).tolist():
        if token == tokenizer.bar_id:
            bars.append([])
        elif bars:
            bars[-1].append(token)
    return bars


class _Sample:
    """One continuation being sampled: its grammar, its new tokens, its bars, its stop.

    With a Form that repeats bars, ``history`` holds the token lists of the bars so
    far and ``replaying`` the tokens of an earlier bar still to be replayed.
    """

    def __init__(self, primed, tokenizer, n_bars, no_end, form=None, rng=None, history=None):
        self.grammar = None if primed is None else copy.deepcopy(primed, {id(primed.tok): primed.tok})
        self.tokenizer = tokenizer
        self.bar_id = None if tokenizer is None else tokenizer.bar_id
        self.eos_id = None if tokenizer is None else tokenizer.eos_id
        self.n_bars, self.form = n_bars, form
        self.no_end = no_end or (form is not None and form.ending is not None)   # it ends in the last bar
        self.new, self.bars, self.stop = [], 0, None
        self.rng, self.history = rng, None if history is None else [list(b) for b in history]
        self.replaying, self.distance = [], None

    def allowed(self, V):
        """bool (V,) of tokens this sample may take next (None: any)."""
        allowed = None if self.grammar is None else self.grammar.allowed()
        if self.no_end and self.eos_id is not None and (self.n_bars is None or self.bars < self.n_bars):
            allowed = np.ones(V, bool) if allowed is None else allowed
            allowed[self.eos_id] = False                      # the piece may not end yet
        if self.form is not None:
            allowed = self.form.restrict(self.tokenizer, self.grammar, self.new, self.bars, self.n_bars,
                                         allowed)
        if self.replaying:
            token = self.replaying[0]
            if allowed is None or allowed[token]:
                allowed = np.zeros(V, bool)
                allowed[token] = True
            else:                                             # the grammar forbids it: sample on
                self.replaying, self.distance = [], None
        return allowed

    def take(self, token):
        """Add ``token`` unless it starts one bar too many; set ``stop`` when done."""
        if token == self.bar_id and self.n_bars is not None and self.bars == self.n_bars:
            self.stop = "bars"
            return
        self.bars += token == self.bar_id
        self.new.append(token)
        if self.grammar is not None:
            self.grammar.advance(token)
        if self.history is not None:
            self._follow(token)
        if token == self.eos_id:
            self.stop = "eos"

    def _follow(self, token):
        """Keep the bars' tokens; at a bar line, ask the Form whether this bar replays an earlier one."""
        if self.replaying:
            if token == self.replaying[0]:
                self.replaying.pop(0)
            else:
                self.replaying, self.distance = [], None
        if token != self.bar_id:
            if self.history:
                self.history[-1].append(token)
            return
        self.history.append([])
        self.replaying, self.distance = self.form.replay(self.tokenizer, self.history, self.bars, self.n_bars,
                                                         self.distance, self.rng)

    def result(self, prompt):
        pending = 0 if self.grammar is None else min(self.grammar.pending, len(self.new))
        new = self.new[:len(self.new) - pending]              # drop a note the budget cut short
        ids = np.concatenate([prompt, np.asarray(new, dtype=np.int32)])
        return Generated(ids, len(prompt), self.stop or "tokens", int(self.bars))


def _progress(progress, total):
    """The progress display of a sampling run (see ``generate``), or a silent stand-in."""
    import contextlib
    import sys

    from music_attn._progress import progress as show

    if progress is None:
        progress = sys.stderr.isatty()
    return show(total, "generate", unit="token", delay=2.0) if progress else contextlib.nullcontext()


def _sample_loop(stepper, samples, max_new_tokens, sampling, rngs, bar=None):
    """Sample every live sample one token per step until each has stopped."""
    N, V = len(samples), stepper.model.config.vocab_size
    masks = np.ones((N, V), dtype=bool)                  # row i: the tokens sample i may take next
    idle = samples[0].eos_id or 0                        # what a stopped sample feeds the model
    tokens = np.full(N, idle, dtype=np.int64)
    live = list(range(N))
    for step in range(max_new_tokens):
        constrained = False
        for row, i in enumerate(live):
            mask = samples[i].allowed(V)
            constrained |= mask is not None
            masks[row] = True if mask is None else mask
        rows = slice(None) if len(live) == N else live
        tokens[rows] = _sample_rows(stepper.logits[rows], sampling, [rngs[i] for i in live],
                                    masks[:len(live)] if constrained else None)
        for i in live:
            samples[i].take(int(tokens[i]))
        tokens[[i for i in live if samples[i].stop is not None]] = idle
        live = [i for i in live if samples[i].stop is None]
        if bar is not None:
            bar.update(1, f"bar {samples[0].bars}" if samples[0].bar_id is not None else "")
        if not live:
            return
        if step + 1 < max_new_tokens:
            stepper.push(tokens)                  # the last token needs no logits after it
