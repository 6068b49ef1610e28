"""The model: what a decoder is, independent of growth and of any framework.

One job per module:

- ``spec``: the neutral description of a family (dims, axes with a direction,
  roles) and ``DecoderConfig``, every structural fact the maths reads;
- ``families``: the family registry (model_type -> ``Family``), each family data;
- ``rope``: every RoPE variant (inverse frequencies, attention factor), read from
  a config once for every family;
- ``decoder``: the decoder maths, written once against an array namespace;
- ``structure``: what a checkpoint of a config stores, where each tensor sits in
  the maths, the tied-head rule, and fresh weights (``init_weights``);
- ``initstream``: the neutral random stream fresh weights are drawn from;
- ``validate``: values checked where they enter (config.json fields, sizes);
- ``testing``: tiny configs of every family and random weights for them.
"""
