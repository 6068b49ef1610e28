"""The coverage table (model/families/coverage.py): every causal-LM model type of the
installed transformers is classified, supported rows are exactly the registered
families' types, docs/families.md is the table as generated, a refused type is refused
with its row's reason, and the types registered on an existing family (Llama's keys
under another model_type) grow exactly from their own config classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hyperclone_core.cli import main
from hyperclone_core.model.families import BUILTIN, coverage as cov

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
from transformers.models.auto.configuration_auto import CONFIG_MAPPING  # noqa: E402
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_every_causal_lm_type_is_classified():
    theirs = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    missing = sorted(theirs - set(cov.COVERAGE))
    assert not missing, f"transformers has causal-LM types the coverage table does not classify: {missing}"
    for mt, row in cov.COVERAGE.items():
        assert row.status in ("supported", "refused") and row.reason, mt
        assert (row.status == "supported") == (row.kind == "supported"), mt


def test_supported_rows_are_the_registered_families():
    registered = {mt for f in BUILTIN.values() for mt in f.model_types}
    table = {mt for mt, row in cov.COVERAGE.items() if row.status == "supported"}
    assert table == registered
    for mt in table:
        assert cov.COVERAGE[mt].reason == f"family {next(f.name for f in BUILTIN.values() if mt in f.model_types)}"


def test_docs_table_is_current():
    assert (ROOT / "docs" / "families.md").read_text() == cov.markdown(), \
        "docs/families.md is stale: python -m hyperclone_core.model.families > docs/families.md"


def test_refused_type_says_the_tables_reason(tmp_path, capsys):
    cfg = transformers.AutoConfig.for_model("mamba", hidden_size=16, num_hidden_layers=1, vocab_size=32,
                                            state_size=4, expand=2)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "m")
    assert main(["expand", str(tmp_path / "m"), str(tmp_path / "w"), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert cov.COVERAGE["mamba"].reason in err and "docs/families.md" in err


ALIASES = [mt for f in BUILTIN.values() for mt in f.model_types if mt != f.name
           and CONFIG_MAPPING[mt].model_type == mt]  # gpt-sw3 is GPT2Config itself: test_family_types grows it


@pytest.mark.parametrize("model_type", ALIASES)
@pytest.mark.parametrize("growth", [["--width", "2"], ["--width", "2", "--ffn", "2", "--layers", "+1"],
                                    ["--width", "1", "--heads", "2", "--kv-heads", "2"]])
def test_alias_types_grow_exactly_from_their_own_config(model_type, growth, tmp_path):
    cfg = transformers.AutoConfig.for_model(
        model_type, vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "src")
    assert main(["expand", str(tmp_path / "src"), str(tmp_path / "dst"), "--quiet", *growth]) == 0
    a, b = (transformers.AutoModelForCausalLM.from_pretrained(tmp_path / d, attn_implementation="eager").eval()
            for d in ("src", "dst"))
    assert b.config.model_type == model_type
    tokens = torch.from_numpy(np.random.default_rng(3).integers(0, 96, (2, 12)))
    with torch.no_grad():
        want, got = a(tokens).logits.numpy(), b(tokens).logits.numpy()
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
        prompt = torch.tensor([[1, 5, 9, 13, 17]])
        ga, gb = (m.generate(prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False) for m in (a, b))
    assert gb.tolist() == ga.tolist()
