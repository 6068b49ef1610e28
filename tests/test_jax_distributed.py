"""The jax backend on an 8-device CPU mesh (data=2, fsdp=2, tensor=2), in a child
process (the device count is fixed when jax starts): sharded expansion puts every
grown tensor on the sharding its role's rule names, with the unsharded values (bit
for bit without noise; noise draws are the same, its power is summed shard-wise);
training on the mesh gives the one-device losses; the rule table covers every role."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from hyperclone_core import family_for_config  # noqa: E402
from hyperclone_core.model import testing  # noqa: E402
from hyperclone_core.errors import ConfigError  # noqa: E402
from hyperclone_core.model.structure import slots  # noqa: E402
from hyperclone_jax import distributed as D  # noqa: E402

P = jax.sharding.PartitionSpec
CHILD = textwrap.dedent('''
    import json, sys
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from hyperclone_core.model.testing import CASES, random_weights
    from hyperclone_core.train import TrainConfig, optimizer_for, train
    import hyperclone_jax as hj
    from hyperclone_jax import distributed as D

    out = {"devices": jax.device_count()}
    mesh = hj.mesh_from("data=2,fsdp=2,tensor=2")
    for case in ("llama", "mixtral"):
        cfg, w = CASES[case], random_weights(CASES[case], seed=1)
        rules = {"mlp.*": P(None, "tensor"), "embed": ("fsdp",)} if case == "mixtral" else None
        strategy = "noisy:10" if case == "llama" else "symmetric"
        grown, new, plan = hj.expand_params(w, cfg, width=2, strategy=strategy, mesh=mesh, rules=rules,
                                            return_plan=True)
        flat, _ = hj.expand_params(w, cfg, width=2, strategy=strategy)
        rows = []
        for tp in plan.tensors:
            x, want = grown[tp.name], D.spec_for(tp.kind, tp.shape, mesh, rules)
            rows.append({"name": tp.name, "kind": tp.kind, "spec": str(x.sharding.spec), "rule": str(want),
                         "same": x.sharding.is_equivalent_to(NamedSharding(mesh, want), x.ndim),
                         "shard": list(x.addressable_shards[0].data.shape),
                         "diff": float(np.abs(np.asarray(x) - np.asarray(flat[tp.name])).max()
                                       / max(float(np.abs(np.asarray(flat[tp.name])).max()), 1e-30))})
        out[case] = rows
    cfg, w = CASES["llama"], random_weights(CASES["llama"], seed=1)
    grown, new, plan = hj.expand_params(w, cfg, width=2, strategy="noisy:10", return_plan=True)
    data = np.resize(np.random.default_rng(0).integers(0, 96, 41), 5000).astype(np.int64)
    for mesh_text in ("", "data=2,fsdp=2,tensor=2"):
        tc = TrainConfig(steps=5, batch_size=8, seq_len=16, lr=3e-3, warmup_steps=2, eval_every=0, seed=4,
                         parallel="mesh" if mesh_text else "none", mesh=mesh_text)
        weights = {n: np.asarray(v) for n, v in grown.items()}
        eng = hj.backend.engine(new, weights, tc, optimizer_for(tc, {n: v.shape for n, v in weights.items()}, plan))
        if mesh_text:
            out["param_specs"] = {n: str(eng._params[n].sharding.spec) for n in eng.names}
        out["losses " + (mesh_text or "one device")] = train(eng, tc, data[:4000], plan=plan).train_losses
    print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def child():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharded_expansion_gives_every_tensor_its_rules_sharding_and_the_unsharded_values(child):
    assert child["devices"] == 8
    for case in ("llama", "mixtral"):
        rows = child[case]
        wrong = [r for r in rows if not r["same"]]
        assert not wrong, f"{case}: tensors not on their rule's sharding: {wrong[:3]}"
        bound = 1e-6 if case == "llama" else 0.0  # llama: noisy:10, mixtral: symmetric
        worst = max(r["diff"] for r in rows)
        assert worst <= bound, f"{case}: sharded values differ from the one-device expansion by {worst:.2e}"
        sharded = [r for r in rows if r["rule"] != str(P())]
        assert len(sharded) >= len(rows) // 2, f"{case}: the rules shard too little: {sharded}"
    by = {r["name"]: r for r in child["llama"]}
    q = by["model.layers.0.self_attn.q_proj.weight"]
    assert q["spec"] == str(P('tensor', 'fsdp')) and q["shard"] == [32, 32]  # (64, 64) over 2 x 2
    assert by["model.layers.0.mlp.down_proj.weight"]["rule"] == str(P('fsdp', 'tensor'))
    assert by["model.norm.weight"]["rule"] == str(P())
    mix = {r["name"]: r for r in child["mixtral"]}  # user rules win over the table
    assert mix["model.embed_tokens.weight"]["rule"] == str(P('fsdp',))
    gate = next(r for r in child["mixtral"] if r["kind"] == "mlp.gate" or r["kind"] == "moe.gate")
    assert gate["kind"] == "moe.gate" and gate["rule"] == str(P('tensor', 'fsdp'))  # mlp.* is not moe.*


def test_mesh_training_matches_one_device_over_five_steps(child):
    one, mesh = child["losses one device"], child["losses data=2,fsdp=2,tensor=2"]
    assert len(one) == len(mesh) == 5
    worst = max(abs(a - b) for a, b in zip(one, mesh))
    assert worst <= 1e-5, f"mesh vs one device: losses differ by {worst:.2e}: {mesh} vs {one}"
    assert child["param_specs"]["lm_head.weight"] == str(P('tensor', 'fsdp'))


def test_the_rule_table_names_every_role_of_every_family():
    """Every matrix of every family gets a sharded dim from the table; norms stay whole."""
    for name, hf in testing.CASES.items():
        fam = family_for_config(hf)
        for s in slots(fam, fam.read(hf), stored_only=False).values():
            axes = D.role_axes(s.kind, len(s.shape))
            if len(s.shape) == 2:
                assert any(axes), f"{name}: {s.kind} has no sharded dim"
            if s.kind.startswith("norm"):
                assert not any(axes), f"{name}: {s.kind} should not be sharded"


def test_spec_drops_mesh_axes_that_do_not_divide_and_parse_errors_name_the_option():
    mesh = D.make_mesh({"data": 1, "fsdp": 1, "tensor": 1})
    assert D.spec_for("attn.q", (64, 32), mesh) == P("tensor", "fsdp")

    class Shape(dict):
        axis_names = D.AXES

    fake = type("M", (), {"shape": Shape(data=2, fsdp=4, tensor=3), "axis_names": D.AXES})()
    assert D.spec_for("attn.q", (64, 32), fake) == P(None, "fsdp")  # 64 % 3 != 0
    assert D.spec_for("mlp.down", (30, 12), fake) == P(None, "tensor")  # 30 % 4 != 0
    assert D.parse_mesh("fsdp=4, tensor=2") == {"data": 1, "fsdp": 4, "tensor": 2}
    for bad, what in (("data=x", "not an integer"), ("data=0", ">= 1"), ("pipe=2", "AXIS=SIZE")):
        with pytest.raises(ConfigError, match=what):
            D.parse_mesh(bad)
    assert np.prod(list(D.parse_mesh("").values())) == 1
