"""An expand output is a complete folder that explains itself: a model card naming the
base model and the measured error (its load snippets run), the source's card kept,
every config.json change nobody asked for printed and recorded, and the plan's summary
counting what the checkpoints really hold."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.util import find_spec

import numpy as np
import pytest

from hyperclone_core import Growth, family_for_config, io, plan
from hyperclone_core.model import testing
from hyperclone_core.expand.card import config_changes, summary
from hyperclone_core.cli import main

WORDS = "hyperclone grows small models into wide ones and trains them".split()


def source_with_card_and_tokenizer(folder, cfg):
    """A checkpoint folder as a hub download has it: weights, config, tokenizer, card."""
    io.save_checkpoint(folder, cfg, testing.random_weights(cfg, seed=4))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# the small model's own card\n")
    if find_spec("tokenizers") is not None:
        from tokenizers import Tokenizer, models, pre_tokenizers

        tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(["[UNK]", *WORDS])}, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    return folder


def test_card_names_the_base_model_and_the_measured_error(tmp_path, capsys):
    cfg = dict(testing.CASES["llama"], _name_or_path="acme/tiny-llama")
    src = source_with_card_and_tokenizer(tmp_path / "small", cfg)
    assert main(["expand", str(src), str(tmp_path / "wide"), "--width", "2", "--layers", "+1", "--seed", "9",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    dst = tmp_path / "wide"
    card = (dst / "README.md").read_text()
    report = json.loads((dst / "hyperclone.json").read_text())
    v = report["verification"]
    assert "base_model: acme/tiny-llama" in card.split("---")[1]  # hub metadata
    assert "grown from **acme/tiny-llama**" in card
    assert f"max |logit difference| {v['max_abs_diff']:.3e}" in card and f"relative {v['relative']:.2e}" in card
    assert "noisy:10" in card and "seed 9" in card and "arXiv:2409.12903" in card
    p = report["parameters"]
    stored = {n: io.Checkpoint(dst).shape(n) for n in io.Checkpoint(dst).names()}
    assert p["after"] == sum(int(np.prod(s)) for s in stored.values())
    assert f"{p['before']:,} -> {p['after']:,}" in card and f"parameters {p['before']:,} -> {p['after']:,}" in out
    assert (dst / "BASE_MODEL_README.md").read_text() == (src / "README.md").read_text()
    assert report["base_model_card"] == "BASE_MODEL_README.md" and "BASE_MODEL_README.md" in card
    assert (dst / "recipe.toml").is_file() and "recipe.toml" in card


def test_card_without_hub_name_or_source_card(tmp_path, case_dir):
    src = case_dir("gpt_neox")
    assert main(["expand", str(src), str(tmp_path / "w"), "--no-verify", "--quiet"]) == 0
    card = (tmp_path / "w" / "README.md").read_text()
    assert "base_model:" not in card and f"grown from **{src.name}**" in card
    assert "not checked (--no-verify)" in card and not (tmp_path / "w" / "BASE_MODEL_README.md").exists()
    assert json.loads((tmp_path / "w" / "hyperclone.json").read_text())["base_model_card"] is None


def test_card_load_snippets_run(tmp_path):
    """The card's Python blocks (transformers, hyperclone_torch, hyperclone_jax, mlx-lm)
    run as written from where expand was run; each one whose framework is missing is skipped."""
    pytest.importorskip("transformers")
    src = source_with_card_and_tokenizer(tmp_path / "small", dict(testing.CASES["llama"]))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["expand", "small", "wide", "--quiet"]) == 0
    finally:
        os.chdir(cwd)
    assert src.is_dir()
    blocks = re.findall(r"```python\n(.*?)```", (tmp_path / "wide" / "README.md").read_text(), re.S)
    need = {"transformers": "transformers", "hyperclone_torch": "torch", "hyperclone_jax": "jax", "mlx_lm": "mlx_lm"}
    runnable = [b for b in blocks if all(find_spec(mod) for key, mod in need.items() if f"import {key}" in b
                                         or f"from {key}" in b)]
    assert len(blocks) == 4 and any("transformers" in b for b in runnable)
    script = "\n".join(runnable) + "\nprint('ran', len(" + repr(runnable) + "))\n"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"ran {len(runnable)}" in r.stdout


def test_unrequested_config_changes_are_printed_and_recorded(tmp_path, capsys):
    # a Gemma-2 whose sliding-window pattern transformers derives from the layer index, and whose
    # RoPE is given only as transformers 5's rope_parameters
    cfg = {k: v for k, v in testing.CASES["gemma2"].items() if k not in ("layer_types", "rope_theta")}
    io.save_checkpoint(tmp_path / "g", cfg, testing.random_weights(cfg, seed=1))
    assert main(["expand", str(tmp_path / "g"), str(tmp_path / "w"), "--layers", "+1", "--quiet"]) == 0
    out = capsys.readouterr().out
    changes = json.loads((tmp_path / "w" / "hyperclone.json").read_text())["config_changes"]
    by_key = {c["key"]: c for c in changes["unrequested"]}
    written = io.read_config(tmp_path / "w")
    assert by_key["layer_types"]["after"] == written["layer_types"] and by_key["layer_types"]["before"] is None
    assert "rope_theta" in by_key and by_key["rope_theta"]["after"] == 10000.0
    assert {c["key"] for c in changes["asked"]} >= {"hidden_size", "num_hidden_layers"}
    assert "config.json changes you did not ask for" in out
    for key in ("layer_types", "rope_theta"):
        assert re.search(rf"^  {key}: .* -> .*: \S", out, re.M), out
        assert f"`{key}`" in (tmp_path / "w" / "README.md").read_text()
    # nothing else differs: every changed key is accounted for
    src = io.read_config(tmp_path / "g")
    differ = {k for k in set(src) | set(written) if src.get(k) != written.get(k) or (k in src) != (k in written)}
    assert differ == set(by_key) | {c["key"] for c in changes["asked"]}


def test_untying_is_a_change_asked_for_only_with_untie():
    cfg = dict(testing.CASES["qwen2"], tie_word_embeddings=True)
    fam = family_for_config(cfg)
    kept = plan(fam, cfg, Growth.of(fam.read(cfg), width=2), "symmetric")
    untied = plan(fam, cfg, Growth.of(fam.read(cfg), width=2), "symmetric", untie=True)
    assert "tie_word_embeddings" not in {c["key"] for c in config_changes(kept, kept.config)["unrequested"]}
    asked = {c["key"]: c for c in config_changes(untied, untied.config, untie=True)["asked"]}
    assert asked["tie_word_embeddings"]["by"] == "untie"
    s_kept, s_untied = summary(kept, lambda n: "float32"), summary(untied, lambda n: "float32")
    vocab, hidden = cfg["vocab_size"], 2 * cfg["hidden_size"]
    assert s_untied["params_after"] - s_kept["params_after"] == vocab * hidden  # one more vocab x hidden matrix
    assert s_kept["tied_embeddings"] == [True, True] and s_untied["tied_embeddings"] == [True, False]


@pytest.mark.parametrize("case", ["llama_tied", "gemma", "opt", "mixtral", "phi3"])
def test_plan_summary_counts_what_the_checkpoints_hold(tmp_path, case_dir, capsys, case):
    src = case_dir(case)
    assert main(["plan", str(src), "--width", "2", "--layers", "+1", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)["summary"]
    assert main(["expand", str(src), str(tmp_path / "w"), "--width", "2", "--layers", "+1", "--dtype", "bfloat16",
                 "--quiet", "--no-verify"]) == 0  # (bf16 rounding flips mixtral's top-k: not this test's subject)
    before, after = io.Checkpoint(src), io.Checkpoint(tmp_path / "w")
    assert s["params_before"] == sum(int(np.prod(before.shape(n))) for n in before.names())
    assert s["params_after"] == sum(int(np.prod(after.shape(n))) for n in after.names())
    assert s["bytes_before"] == sum(int(np.prod(before.shape(n))) * 4 for n in before.names())  # float32 source
    assert sum(r["params_after"] for r in s["roles"]) == s["params_after"]
    report = json.loads((tmp_path / "w" / "hyperclone.json").read_text())["parameters"]
    assert report["bytes_after"] == s["params_after"] * 2  # bfloat16
    capsys.readouterr()
    assert main(["plan", str(src), "--width", "2", "--layers", "+1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("summary: ") and f"parameters {s['params_before']:,} -> {s['params_after']:,}" in text
    assert all(re.search(rf"^  {re.escape(r['kind'])} +\d+ -> \d+ ", text, re.M) for r in s["roles"])


def test_the_card_inherits_the_base_cards_license_language_datasets_and_tags(tmp_path, case_dir):
    """A pushed clone of an Apache-2.0 model must not read "license: unknown"."""
    import shutil

    from hyperclone_core.expand.card import front_matter
    from hyperclone_core.expand.checkpoint import expand_checkpoint

    src = tmp_path / "base"
    shutil.copytree(case_dir("llama"), src)
    (src / "README.md").write_text("---\nlicense: apache-2.0\nlanguage:\n- en\n- fr\ndatasets: [wikitext, 'c4']\n"
                                   "tags:\n- tiny\nwidget: {text: hi}\n---\n# Base\n")
    expand_checkpoint(src, tmp_path / "grown", width=2, progress=False)
    fm = front_matter((tmp_path / "grown" / "README.md").read_text())
    assert fm["license"] == "apache-2.0" and fm["language"] == ["en", "fr"] and fm["datasets"] == ["wikitext", "c4"]
    assert {"hyperclone", "llama", "tiny"} <= set(fm["tags"]) and "widget" not in fm
    assert "base_model_relation" not in fm  # an untrained clone is no finetune
    for name in ("README.md", "hyperclone.json", "recipe.toml"):
        assert str(tmp_path) not in (tmp_path / "grown" / name).read_text(), name


def test_front_matter_reads_only_what_it_understands():
    from hyperclone_core.expand.card import front_matter

    assert front_matter("no front matter") == {}
    assert front_matter("---\nlicense: mit\n") == {}  # never closed
    assert front_matter("---\nlicense: 'mit'\ntags: []\n---\n") == {"license": "mit", "tags": []}
