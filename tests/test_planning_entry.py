"""One planning entry (``hyperclone_core.algebra.options.plan_growth``) for every caller:
the CLI and each backend's in-memory expansion refuse the same bad options with the
same one-line error, and nothing in the core restates the rules it owns."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from hyperclone_core.algebra.options import plan_growth
from hyperclone_core.cli import main
from hyperclone_core.errors import PlanError, UsageError
from hyperclone_core.model import testing

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "hyperclone_core"
TYPO = "mlp2=noisy:10"


def _cli_error(capsys, src) -> str:
    assert main(["plan", str(src), "--width", "2", "--strategy", TYPO]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _message(exc: BaseException) -> str:
    return str(exc).strip()


def test_plan_growth_refuses_an_unmatched_rule_naming_it():
    with pytest.raises(PlanError, match=r"'mlp2' matches no tensor"):
        plan_growth(testing.CASES["llama"], width=2, strategy=TYPO)


def test_plan_growth_refuses_sizes_past_the_limit_before_allocating():
    with pytest.raises(UsageError, match="past the largest supported size"):
        plan_growth(testing.CASES["llama"], width=2**20)
    with pytest.raises(UsageError, match="--layers"):
        plan_growth(testing.CASES["llama"], layers="+x")


def test_the_default_strategy_is_the_library_default():
    from hyperclone_core.algebra.strategy import DEFAULT

    assert plan_growth(testing.CASES["llama"], width=2).strategy == plan_growth(
        testing.CASES["llama"], width=2, strategy=DEFAULT).strategy


def test_torch_expand_model_gives_the_clis_error(case_dir, capsys):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from hyperclone_torch import expand_model

    src = case_dir("llama")
    cli = _cli_error(capsys, src)
    model = transformers.AutoModelForCausalLM.from_pretrained(src)
    with pytest.raises(PlanError) as info:
        expand_model(model, width=2, strategy=TYPO)
    assert _message(info.value) in cli


def test_jax_expand_params_gives_the_clis_error(case_dir, capsys):
    pytest.importorskip("jax")
    import hyperclone_jax as hj

    src = case_dir("llama")
    cli = _cli_error(capsys, src)
    cfg = testing.CASES["llama"]
    params = testing.random_weights(cfg, seed=0)
    with pytest.raises(PlanError) as info:
        hj.expand_params(params, cfg, width=2, strategy=TYPO)
    assert _message(info.value) in cli


def test_mlx_expand_model_gives_the_clis_error(case_dir, capsys, tmp_path):
    pytest.importorskip("mlx.core")
    mlx_lm = pytest.importorskip("mlx_lm")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from hyperclone_mlx import expand_model

    src = case_dir("llama")
    cli = _cli_error(capsys, src)
    torch.manual_seed(0)
    folder = tmp_path / "hf"
    transformers.AutoModelForCausalLM.from_pretrained(src).save_pretrained(folder)
    model, config = mlx_lm.utils.load_model(folder)[:2] if hasattr(mlx_lm.utils, "load_model") else (None, None)
    if model is None:  # pragma: no cover - older mlx-lm
        pytest.skip("mlx_lm.utils.load_model is missing")
    with pytest.raises(PlanError) as info:
        expand_model(model, config=config, width=2, strategy=TYPO)
    assert _message(info.value) in cli


# ------------------------------------------------------------ one home per rule


def _string_constants(path: Path) -> list:
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def _core_constants() -> dict:
    return {p: _string_constants(p) for p in CORE.rglob("*.py")}


def test_the_default_strategy_is_written_once_in_the_core():
    where = [str(p.relative_to(ROOT)) for p, consts in _core_constants().items() for c in consts if c == "noisy:10"]
    assert where == ["hyperclone_core/algebra/strategy.py"], where


def test_the_clone_lr_rule_names_are_written_once_in_the_core():
    from hyperclone_core.train.clone import CLONE_LR_RULES

    for rule in CLONE_LR_RULES:
        if not rule:
            continue
        where = [str(p.relative_to(ROOT)) for p, consts in _core_constants().items() for c in consts if c == rule]
        assert where == ["hyperclone_core/train/clone.py"], (rule, where)


def test_plan_hands_out_its_family():
    p = plan_growth(testing.CASES["gemma"], width=2, strategy="symmetric")
    assert p.spec.name == p.family and "gemma" in p.spec.model_types


def test_one_seed_derivation():
    from hyperclone_core.algebra import noise

    assert noise.seed_for(3, "a.weight") == noise.fnv1a63(b"3:a.weight")
    assert noise.derive_seed(3, 1) == noise.fnv1a63((3).to_bytes(16, "little", signed=True)
                                                    + (1).to_bytes(16, "little", signed=True))
    assert np.uint64(noise.seed_for(0, "x")) < 2**63
