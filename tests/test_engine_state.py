"""``check_state``: the one check of an ``EngineState`` against the model before any
engine imports it, with messages that name the tensor; and every backend's
``import_state`` going through it."""

from __future__ import annotations

import numpy as np
import pytest

from hyperclone_core.train import EngineState, TrainConfig, TrainError, check_state, optimizer_for

NAMES = ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight"]
SHAPES = {NAMES[0]: (10, 4), NAMES[1]: (16, 4)}


def state(step: int = 3, **change) -> EngineState:
    arrays = {n: np.zeros(s, np.float32) for n, s in SHAPES.items()}
    parts = {"params": dict(arrays), "exp_avg": dict(arrays), "exp_avg_sq": dict(arrays)}
    for key, value in change.items():
        part, _, name = key.partition("__")
        name = NAMES[int(name)]
        if value is None:
            del parts[part][name]
        else:
            parts[part][name] = value
    return EngineState(parts["params"], parts["exp_avg"], parts["exp_avg_sq"], step)


def test_a_matching_state_passes_and_extra_tensors_are_ignored():
    s = state()
    s.params["not.in.the.model"] = np.zeros(3, np.int64)
    check_state(s, NAMES, SHAPES)


@pytest.mark.parametrize("change,message", [
    ({"exp_avg__1": np.zeros((8, 4), np.float32)},
     "exp_avg['model.layers.0.mlp.up_proj.weight']: shape (8, 4), the model has (16, 4)"),
    ({"params__0": np.zeros((10, 5), np.float32)},
     "params['model.embed_tokens.weight']: shape (10, 5), the model has (10, 4)"),
    ({"exp_avg_sq__1": np.zeros(16 * 4, np.float32)},
     "exp_avg_sq['model.layers.0.mlp.up_proj.weight']: shape (64,), the model has (16, 4)"),
    ({"params__1": np.zeros((16, 4), np.int32)},
     "params['model.layers.0.mlp.up_proj.weight']: dtype int32, expected floating point (float32)"),
    ({"params__0": None}, "params lacks 'model.embed_tokens.weight': the state is not this model's"),
    ({"exp_avg__0": None, "exp_avg__1": None}, "exp_avg lacks 'model.embed_tokens.weight' and 1 more: "),
])
def test_a_state_that_does_not_fit_is_refused_naming_the_tensor(change, message):
    with pytest.raises(TrainError) as exc:
        check_state(state(**change), NAMES, SHAPES)
    assert str(exc.value).startswith(message), str(exc.value)


def test_moments_of_a_fresh_optimizer_are_not_read():
    check_state(state(step=0, exp_avg__1=np.zeros((8, 4), np.float32), exp_avg_sq__0=None), NAMES, SHAPES)


@pytest.mark.parametrize("step", [-1, 2.0, True, "3"])
def test_the_step_must_be_a_count(step):
    with pytest.raises(TrainError, match=r"adam_step: .*expected an integer >= 0"):
        check_state(state(step=step), NAMES, SHAPES)
    check_state(state(step=np.int64(4)), NAMES, SHAPES)


@pytest.mark.parametrize("backend", ["torch", "jax", "mlx"])
def test_every_engine_checks_before_importing(backend):
    from hyperclone_core.demo.race import llama_config, random_weights
    from hyperclone_core.run.protocol import load_backend

    try:
        bk = load_backend(backend)
    except Exception as e:  # not installed here
        pytest.skip(f"{backend}: {e}")
    cfg = llama_config(32, 1, 2, 64, 64, 16)
    w = random_weights(cfg, 0)
    tc = TrainConfig(steps=2, batch_size=2, seq_len=8, device="cpu")
    eng = bk.engine(cfg, w, tc, optimizer_for(tc, {n: a.shape for n, a in w.items()}))
    try:
        good = eng.export_state()
        name = "model.layers.0.mlp.up_proj.weight"
        bad = EngineState(good.params, dict(good.exp_avg, **{name: np.zeros((8, 32), np.float32)}),
                          good.exp_avg_sq, 1)
        with pytest.raises(TrainError, match=r"^exp_avg\['model\.layers\.0\.mlp\.up_proj\.weight'\]: shape \(8, 32\), "
                                             r"the model has \(64, 32\)$"):
            eng.import_state(bad)
        eng.import_state(good)  # and a fitting one still goes in
        np.testing.assert_array_equal(eng.params([name])[name], good.params[name])
    finally:
        eng.close()
