"""Shared references for the tests (add to this file; do not replace what is here)."""

import numpy as np


def loop_note_attention(att, labels, n_notes):
    """Float64 Python-loop reference of the token -> note rule.

    att (L, H, T, T) dense attention, labels (T,) note of each token (-1 none) ->
    note attention (L, H, N, N) and structure share (L, H, N): for note i, the mean over
    its tokens t of the summed weight on the tokens of note j (on tokens of no note).
    """
    att = np.asarray(att, dtype=np.float64)
    labels = list(np.asarray(labels).tolist())
    L, H, T, _ = att.shape
    notes = np.zeros((L, H, n_notes, n_notes))
    structure = np.zeros((L, H, n_notes))
    for layer in range(L):
        for head in range(H):
            for i in range(n_notes):
                q = [t for t in range(T) if labels[t] == i]
                for t in q:
                    for s in range(T):
                        if labels[s] >= 0:
                            notes[layer, head, i, labels[s]] += att[layer, head, t, s] / len(q)
                        else:
                            structure[layer, head, i] += att[layer, head, t, s] / len(q)
    return notes, structure
