"""Checkpoint expansion: a folder grown, verified and described.

One job per module:

- ``checkpoint``: checkpoint-to-checkpoint expansion (streamed, atomic) and
  verification against the source;
- ``tolerances``: how far a clone's logits may drift before verification fails;
- ``card``: the grown folder's model card and ``hyperclone.json``.
"""
