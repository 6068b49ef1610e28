"""Zero-sum noise, SNR, strategy syntax, plan JSON round trip, layer maps."""

from __future__ import annotations

import numpy as np
import pytest

from hyperclone_core import AddNoise, Growth, PlanError, Scale, Take, family_for_config, layer_map, parse_strategy, plan
from hyperclone_core.model import families, testing
from hyperclone_core.algebra.growth import ReplicationMap, axis_map, copy_ids
from hyperclone_core.algebra.planner import Plan
from hyperclone_core.run.reference import execute


def _llama_plan(strategy="noisy:10", **kw):
    cfg = testing.CASES["llama"]
    fam = family_for_config(cfg)
    return cfg, fam, plan(fam, cfg, Growth.of(fam.read(cfg), **kw), strategy, seed=7)


@pytest.mark.parametrize("snr_db", [1.0, 10.0, 20.0])
@pytest.mark.parametrize("width,ffn,layout", [(2, None, "tile"), (3, None, "tile"), (2, 1.5, "tile"),
                                              (2, None, "interleave")])
def test_noise_sums_to_zero_over_copies_and_hits_the_snr(snr_db, width, ffn, layout):
    cfg, fam, p_noisy = _llama_plan(f"noisy:{snr_db:g}", width=width, ffn=ffn, layout=layout)
    _, _, p_clean = _llama_plan("symmetric", width=width, ffn=ffn, layout=layout)
    w = testing.random_weights(cfg, seed=2)
    noisy, clean = execute(p_noisy, w), execute(p_clean, w)
    checked = 0
    for tp in p_noisy.tensors:
        ops = [o for o in tp.ops if isinstance(o, AddNoise)]
        if not ops:
            np.testing.assert_array_equal(noisy[tp.name], clean[tp.name])
            continue
        op = ops[0]
        n = (noisy[tp.name].astype(np.float64) - clean[tp.name])
        groups = p_noisy.arrays[op.groups]
        sums = np.zeros(n.shape[:op.axis] + (groups.max() + 1,) + n.shape[op.axis + 1:])
        np.add.at(np.moveaxis(sums, op.axis, 0), groups, np.moveaxis(n, op.axis, 0))
        # zero-sum to float32 rounding of the weights
        assert np.abs(sums).max() <= 8 * np.finfo(np.float32).eps * np.abs(clean[tp.name]).max() * width
        snr = 10 * np.log10(np.mean(clean[tp.name].astype(np.float64) ** 2) / np.mean(n ** 2))
        assert abs(snr - snr_db) < 0.5, f"{tp.name}: SNR {snr:.2f} dB, asked {snr_db}"
        checked += 1
    assert checked >= 7 * testing.CASES["llama"]["num_hidden_layers"]


def test_noise_is_seeded_per_tensor_and_plan():
    cfg, _, p1 = _llama_plan()
    w = testing.random_weights(cfg)
    a, b = execute(p1, w), execute(p1, w)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    p2 = plan(family_for_config(cfg), cfg, Growth.of(family_for_config(cfg).read(cfg)), "noisy:10", seed=8)
    c = execute(p2, w)
    assert not np.array_equal(a["model.layers.0.mlp.up_proj.weight"], c["model.layers.0.mlp.up_proj.weight"])


def test_replication_maps_tile_interleave_and_uneven():
    assert ReplicationMap(3, 6, "tile").src().tolist() == [0, 1, 2, 0, 1, 2]
    assert ReplicationMap(3, 6, "interleave").src().tolist() == [0, 0, 1, 1, 2, 2]
    assert ReplicationMap(3, 5, "tile").src().tolist() == [0, 1, 2, 0, 1]
    assert ReplicationMap(3, 5, "tile").copies().tolist() == [2, 2, 1]
    assert copy_ids(np.array([0, 1, 0, 2, 1, 0])).tolist() == [0, 0, 1, 0, 1, 2]
    with pytest.raises(PlanError, match="shrink"):
        ReplicationMap(4, 3)


def test_gqa_axis_map_keeps_groups_consistent():
    """q head (kv, g) must read the kv head the grown k/v put at index kv."""
    old = {"kv_heads": 2, "q_per_kv": 2, "head_dim": 1}
    for growth in ({"kv_heads": ReplicationMap(2, 4)}, {"q_per_kv": ReplicationMap(2, 4)}):
        q = axis_map([("kv_heads", "q_per_kv", "head_dim")], growth, old)
        k = axis_map([("kv_heads", "head_dim")], growth, old)
        new_qpk = (growth.get("q_per_kv") or ReplicationMap(2, 2)).new
        for head, src in enumerate(q.src):
            kv_new = head // new_qpk
            assert k.src[kv_new] == src // 2  # the source q head's kv head


def test_strategy_syntax():
    assert str(parse_strategy("noisy:10")) == "noisy:10"
    r = parse_strategy("mlp=noisy:10,attn=symmetric,*=diagonal")
    assert str(r.for_tensor("model.layers.0.mlp.up_proj.weight", "mlp.up")) == "noisy:10"
    assert str(r.for_tensor("x", "attn.q")) == "symmetric"
    assert str(r.for_tensor("lm_head.weight", "lm_head")) == "diagonal"
    assert str(parse_strategy("*.q_proj.*=first_copy").for_tensor("a.q_proj.weight", "attn.q")) == "first_copy"
    assert str(parse_strategy("diagonal+noise:5")) == "diagonal+noise:5"
    for bad in ("bogus", "random_split:x", "mlp", "noise:3+symmetric"):
        with pytest.raises(PlanError):
            parse_strategy(bad)


def test_plan_json_round_trip_executes_identically():
    cfg, _, p = _llama_plan("random_split:0.5", width=2, ffn=1.5, layers=3)
    q = Plan.from_json(p.to_json())
    assert q.config == p.config and q.decoder == p.decoder and len(q.tensors) == len(p.tensors)
    assert q.tensors == p.tensors
    w = testing.random_weights(cfg)
    a, b = execute(p, w), execute(q, w)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    text = str(p)
    assert "certificate: EXACT" in text and "take(axis=0" in text


def test_layer_map_spreads_copies_after_their_sources():
    assert layer_map(4, 6) == [(0, False), (0, True), (1, False), (2, False), (2, True), (3, False)]
    assert [s for s, _ in layer_map(2, 5)] == sorted(s for s, _ in layer_map(2, 5))
    assert sum(c for _, c in layer_map(3, 9)) == 6


def test_depth_copies_zero_only_residual_writers():
    cfg, _, p = _llama_plan("symmetric", width=1, layers=3)
    w = testing.random_weights(cfg)
    out = execute(p, w)
    inserted = [j for j, (_, ins) in enumerate(layer_map(2, 3)) if ins]
    for j in inserted:
        assert not out[f"model.layers.{j}.self_attn.o_proj.weight"].any()
        assert not out[f"model.layers.{j}.mlp.down_proj.weight"].any()
        assert out[f"model.layers.{j}.self_attn.q_proj.weight"].any()
    assert p.config["num_hidden_layers"] == 3


def test_take_ops_name_their_maps():
    _, _, p = _llama_plan("symmetric")
    t = p.tensor("model.layers.0.self_attn.q_proj.weight")
    takes = [o for o in t.ops if isinstance(o, Take)]
    assert [o.axis for o in takes] == [0, 1]
    assert p.arrays[takes[0].map].shape == (64,) and takes[1].map == "src:hidden"
    # symmetric's 1/k depends on the old index only: applied to the source, before the gathers
    assert isinstance(t.ops[0], Scale) and p.arrays[t.ops[0].coeffs].shape == (32,)


@pytest.mark.parametrize("axis", [0, 1])
def test_blockwise_noise_keeps_zero_sum_and_snr(axis):
    """The numpy backend adds noise a block of rows at a time for big tensors."""
    from hyperclone_core.run.numpy_backend import backend as nb

    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 48)).astype(np.float32)
    groups = np.arange(x.shape[axis]) % (x.shape[axis] // 3)  # 3 tiled copies
    clean = x.copy()
    out = nb.add_zero_sum_noise(x, axis, groups, 10.0, seed=4, chunk_elems=100)
    n = out.astype(np.float64) - clean
    sums = np.zeros((60, 48))
    np.add.at(np.moveaxis(sums, axis, 0), groups, np.moveaxis(n, axis, 0))
    assert np.abs(sums).max() < 1e-5
    assert abs(10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(n ** 2)) - 10.0) < 0.05


@pytest.mark.parametrize("model_type", sorted(families.TINY))
def test_plan_json_round_trip_keeps_every_decoder_field(model_type):
    """Every DecoderConfig field survives a plan's JSON, for every type a family grows
    (tuple fields come back as tuples, nested ones all the way down)."""
    hf = families.TINY[model_type]
    family = family_for_config(hf)
    cfg = family.read(hf)
    depth = cfg.layers + 1 if family.depth_exact(cfg) else None
    try:
        p = plan(family, hf, Growth.of(cfg, width=2, layers=depth), "symmetric", seed=7)
    except PlanError as exc:  # a documented refusal (e.g. a layer pattern the config keys cannot write)
        pytest.skip(str(exc))
    q = Plan.from_json(p.to_json())
    assert q.source_decoder == p.source_decoder and q.decoder == p.decoder
    assert q.config == p.config and q.tensors == p.tensors
