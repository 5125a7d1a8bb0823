"""Pure conversion functions between released checkpoints and xmodal models (state dict in, state dict out).

They never download anything; the ``xmodal convert`` CLI verb reads and writes the files.
"""
