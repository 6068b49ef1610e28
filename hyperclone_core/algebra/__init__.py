"""The growth algebra: how every tensor grows, proved before any weight moves.

One job per module:

- ``growth``: replication maps of named dims and the index maps of composite axes;
- ``strategy``: how the copies of a weight share it (mixing, noise, rules), as values;
- ``program``: the plan's per-tensor program format (the ops a backend executes);
- ``noise``: zero-sum noise, its scale, and the one seed derivation;
- ``certificate``: what the planner proved, tensor by tensor;
- ``planner``: growth + family + strategy -> a certified, pure-data ``Plan``;
- ``options``: the one planning entry, growth options as users type them -> a
  checked plan (size limits, unknown or unmatched rules refused).
"""
