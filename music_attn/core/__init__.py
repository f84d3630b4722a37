"""The numerical core: softmax, masks, attention, positions and the decoder model (numpy only)."""
