"""Sampling continuations: temperature, top-k, top-p, the tokenizer's grammar, the KV cache.

``generate`` primes a KV cache with the prompt, then samples one token at a
time (nanoGPT's recipe: crop, temperature, top-k, softmax, top-p, sample,
append).  With ``constrained=True`` (the default) every token the tokenizer's
grammar forbids at that point gets probability zero before sampling, so the
result always decodes with zero skipped tokens.

Shape legend: V vocab.
"""

from typing import NamedTuple

import numpy as np

__all__ = ["next_token_distribution", "sample_next", "generate", "Generated"]


def next_token_distribution(logits, temperature=1.0, top_k=None, top_p=None, *, allowed=None):
    """The distribution ``sample_next`` draws from.

    Parameters
    ----------
    logits : (V,) next-token logits.
    temperature : float >= 0; 0 puts all the mass on the (allowed) argmax.
    top_k : keep only the k most likely tokens (exactly k, ties broken by id).
    top_p : keep the smallest set of most likely tokens whose mass reaches top_p.
    allowed : optional bool (V,), tokens that may be sampled at all.

    Returns
    -------
    probs : (V,) float64, sums to 1.
    """
    logits = np.array(logits, dtype=np.float64).reshape(-1)         # (V,)
    if allowed is not None:
        logits[~np.asarray(allowed, dtype=bool)] = -np.inf           # 1. forbidden tokens
    if not np.isfinite(logits).any():
        raise ValueError("no token may be sampled: every logit is -inf or masked")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:                                             # 2. greedy
        probs = np.zeros_like(logits)
        probs[np.argmax(logits)] = 1.0
        return probs
    logits /= temperature                                            # 3. temperature
    if top_k is not None:                                            # 4. top-k
        logits = _keep_top_k(logits, int(top_k))
    probs = np.exp(logits - logits.max())                            # 5. softmax
    probs /= probs.sum()
    if top_p is not None:                                            # 6. nucleus
        probs = _keep_top_p(probs, float(top_p))
    return probs


def _keep_top_k(logits, k):
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    if k >= logits.size:
        return logits
    order = np.argsort(-logits, kind="stable")                       # most likely first
    out = np.full_like(logits, -np.inf)
    out[order[:k]] = logits[order[:k]]
    return out


def _keep_top_p(probs, p):
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {p}")
    order = np.argsort(-probs, kind="stable")                        # most likely first
    mass_before = np.cumsum(probs[order]) - probs[order]
    keep = order[mass_before < p]                                    # until the mass reaches p
    out = np.zeros_like(probs)
    out[keep] = probs[keep]
    return out / out.sum()


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, rng=None, *, allowed=None):
    """Sample the next token id from ``logits`` (V,).

    ``temperature=0`` is greedy (argmax among the allowed tokens) and needs no
    ``rng``; otherwise ``rng`` (np.random.Generator) is required.  See
    :func:`next_token_distribution` for the other arguments.
    """
    probs = next_token_distribution(logits, temperature, top_k, top_p, allowed=allowed)
    if temperature == 0:
        return int(np.argmax(probs))
    if rng is None:
        raise ValueError("sampling with temperature > 0 needs an np.random.Generator (rng=...)")
    cdf = np.cumsum(probs)
    token = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(token, int(np.flatnonzero(probs)[-1]))


class Generated(NamedTuple):
    """A generated sequence.

    ids : (n,) int32, the prompt (without a trailing EOS) followed by the new tokens.
    prompt_length : number of prompt tokens at the start of ``ids``.
    stop : why generation stopped: "eos", "bars" or "tokens".
    """
    ids: np.ndarray
    prompt_length: int
    stop: str


def _prompt(prompt_ids, tokenizer):
    """The prompt as int32 (n,), without trailing EOS/PAD; [BOS] when empty."""
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
    """Next-token logits of a growing sequence, with or without the KV cache.

    When the window the model can see (``max_len``) is full, it slides: the
    last ``max_len // 2`` tokens are fed again from an empty cache, so
    generation can go on for as long as asked, each token seeing at least
    half a window of context.
    """

    def __init__(self, model, context, use_cache):
        self.model, self.use_cache = model, use_cache
        self.cache = model.new_cache(1) if use_cache else None
        self._restart(list(int(t) for t in context))

    def _restart(self, window):
        self.seq = window
        if self.cache is not None:
            self.cache.reset()
        self.logits = self.model.forward(np.asarray([self.seq]), cache=self.cache)[0, -1]   # (V,)

    def push(self, token):
        self.seq.append(token)
        if len(self.seq) > self.model.config.max_len:
            self._restart(self.seq[-(self.model.config.max_len // 2):])
        elif self.use_cache:
            self.logits = self.model.forward(np.array([[token]]), cache=self.cache)[0, -1]
        else:
            self.logits = self.model.forward(np.asarray([self.seq]))[0, -1]


def generate(model, prompt_ids=None, *, max_new_tokens=None, n_bars=None, temperature=1.0,
             top_k=None, top_p=None, rng=None, constrained=True, tokenizer=None, use_cache=True):
    """Continue ``prompt_ids`` by sampling from ``model``.

    Parameters
    ----------
    model : Model.
    prompt_ids : int ids to continue (a trailing EOS is dropped); None or empty
        starts from BOS.  A prompt too long for ``max_len`` is cropped to its
        last tokens for the model (the grammar still reads all of it).
    max_new_tokens : stop after this many new tokens.  Default: ``max_len``
        without ``n_bars``, ``n_bars * max_len`` with it (a bound, should the
        model never close a bar).
    n_bars : stop before the Bar token that would start bar ``n_bars + 1`` (REMI).
    temperature, top_k, top_p : see :func:`next_token_distribution`.
    rng : np.random.Generator (needed unless temperature is 0).
    constrained : mask tokens the tokenizer's grammar forbids before sampling.
    tokenizer : defaults to ``model.tokenizer``.
    use_cache : use the KV cache (False recomputes the whole prefix every step).

    Returns
    -------
    Generated(ids, prompt_length, stop): generation also stops at EOS; past
    ``max_len`` tokens the model's window slides (see ``_Stepper``); a note
    left unfinished by a budget is dropped, so constrained output always
    decodes with 0 skipped.
    """
    tokenizer = model.tokenizer if tokenizer is None else tokenizer
    if constrained and tokenizer is None:
        raise ValueError("grammar-constrained generation needs a tokenizer")
    if max_new_tokens is None:
        max_new_tokens = model.config.max_len * (1 if n_bars is None else n_bars)
    prompt = _prompt(prompt_ids, tokenizer)
    grammar = _primed_grammar(tokenizer, prompt) if constrained else None
    stepper = _Stepper(model, _context(prompt, model.config.max_len, max_new_tokens), use_cache)
    new, stop = _sample_loop(stepper, grammar, tokenizer, max_new_tokens, n_bars,
                             (temperature, top_k, top_p, rng))
    pending = min(getattr(grammar, "pending", 0), len(new)) if grammar is not None else 0
    new = new[:len(new) - pending]                 # drop a note the budget cut short
    ids = np.concatenate([prompt, np.asarray(new, dtype=np.int32)])
    return Generated(ids, len(prompt), stop)


def _sample_loop(stepper, grammar, tokenizer, max_new_tokens, n_bars, sampling):
    """Sample until a stop condition; returns (new token ids, reason)."""
    bar_id = getattr(tokenizer, "bar_id", None)
    eos_id = None if tokenizer is None else tokenizer.eos_id
    new, bars = [], 0
    while len(new) < max_new_tokens:
        allowed = None if grammar is None else grammar.allowed()
        token = sample_next(stepper.logits, *sampling, allowed=allowed)
        if n_bars is not None and token == bar_id:
            bars += 1
            if bars > n_bars:
                return new, "bars"
        new.append(token)
        if grammar is not None:
            grammar.advance(token)
        if token == eos_id:
            return new, "eos"
        if len(new) < max_new_tokens:      # the last token needs no logits after it
            stepper.push(token)
    return new, "tokens"
