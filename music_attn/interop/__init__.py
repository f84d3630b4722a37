"""Interop with other tools (optional extras): MidiTok and Hugging Face attention over notes
(``[interop]``), and the PyTorch bridge with data-parallel training (``[torch]``).

The modules import their third-party packages themselves, so importing this
package needs none of them: ``music_attn.interop.torch_bridge`` needs torch,
``music_attn.interop.miditok`` needs miditok, ``music_attn.interop.hf`` needs
nothing beyond numpy (it accepts torch tensors when torch is there).
"""
