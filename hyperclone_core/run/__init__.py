"""Running plans and models: the backend protocol and what executes on it.

One job per module:

- ``protocol``: the backend protocol (capabilities, required and optional hooks)
  and discovery through entry points;
- ``arrayops``: the plan primitives written once over an array namespace
  (``ArrayPrimitives``): a backend supplies conversion, noise and fast paths;
- ``interpreter``: the one interpreter of tensor programs, which in-memory,
  streaming and checkpoint expansion all go through;
- ``rowblocks``: big programs in blocks of destination rows (streaming);
- ``numpy_backend``: the numpy backend (expand + forward);
- ``reference``: the numpy oracle every backend is held to;
- ``lazyweights``: the decoder run on weights read from a checkpoint on demand.
"""
