"""Recipe files (--config FILE): every option from TOML, flags override it, and the
recipe written into an output replays the run: the same bytes for a strategy without
noise, the same noise for the same seed."""

from __future__ import annotations

import math
import os
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperclone_core import io
from hyperclone_core.console import recipe
from hyperclone_core.model import testing
from hyperclone_core.cli import build_parser, main
from hyperclone_core.errors import UsageError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


def weights_bytes(folder) -> dict:
    """Every file that holds the model (weights and config), by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.suffix == ".safetensors" or p.name in ("config.json", "model.safetensors.index.json")}


def expand(*argv) -> int:
    return main(["expand", *map(str, argv), "--quiet"])


@pytest.mark.parametrize("strategy,seed", [("symmetric", 0), ("noisy:10", 7), ("mlp=noisy:3,*=random_split:0.3", 11)])
def test_recipe_file_reproduces_the_flags_bytes(tmp_path, case_dir, strategy, seed):
    src = case_dir("qwen2")
    flags = ["--width", "2", "--ffn", "1.5", "--layers", "+1", "--strategy", strategy, "--seed", str(seed)]
    assert expand(src, tmp_path / "flags", *flags) == 0
    (tmp_path / "grow.toml").write_text(
        f'src = "{src}"\ndst = "{tmp_path / "file"}"\nwidth = 2\nffn = 1.5\nlayers = "+1"\n'
        f'strategy = "{strategy}"\nseed = {seed}\n')
    assert expand("--config", tmp_path / "grow.toml") == 0
    want = weights_bytes(tmp_path / "flags")
    assert want and weights_bytes(tmp_path / "file") == want
    # the recipe written into the output replays it, to another folder given on the command line
    assert expand("--config", tmp_path / "flags" / "recipe.toml", src, tmp_path / "replay") == 0
    assert weights_bytes(tmp_path / "replay") == want
    if "noisy" in strategy:  # the noise is the seed's: another seed draws other noise
        assert expand("--config", tmp_path / "grow.toml", "--seed", str(seed + 1), src, tmp_path / "other") == 0
        assert weights_bytes(tmp_path / "other")["model.safetensors"] != want["model.safetensors"]


def test_written_recipe_holds_every_option_resolved(tmp_path, case_dir):
    src = case_dir("llama")
    assert expand(src, tmp_path / "w", "--width", "2", "--max-shard-size", "30KB") == 0
    doc = tomllib.loads((tmp_path / "w" / "recipe.toml").read_text())
    assert doc["strategy"] == "noisy:10" and doc["width"] == 2 and doc["max_shard_size"] == 30_000
    # paths relative to the recipe's folder: no path of this machine, and the replay goes to a fresh folder
    assert doc["src"] == os.path.relpath(src.resolve(), (tmp_path / "w").resolve()) and doc["dst"] == "../w-replay"
    expand_opts = {a.dest for a in build_parser().commands["expand"]._actions if a.option_strings or a.dest in
                   ("src", "dst")}
    not_recorded = {"help", "debug", "config", "force", "quiet"}  # how it ran, not what it made
    left_default = {"ffn", "ffn_size", "heads", "kv_heads", "layers", "dtype", "device", "tolerance"}  # None
    assert set(doc) == expand_opts - not_recorded - left_default


def test_flags_override_the_file_and_exclusive_options_follow_the_command_line(tmp_path, case_dir):
    src = case_dir("llama")
    (tmp_path / "grow.toml").write_text(f'src = "{src}"\ndst = "{tmp_path / "a"}"\nwidth = 2\nffn = 1.5\n')
    assert expand("--config", tmp_path / "grow.toml", "--width", "4", "--ffn-size", "100") == 0
    cfg = io.read_config(tmp_path / "a")
    assert cfg["hidden_size"] == 4 * 32 and cfg["intermediate_size"] == 100
    written = tomllib.loads((tmp_path / "a" / "recipe.toml").read_text())
    assert written["ffn_size"] == 100 and "ffn" not in written


@pytest.mark.parametrize("text,needle", [
    ("widht = 2\n", "unknown option 'widht'"),
    ('width = "two"\n', "--width 'two': not a number"),
    ("width = 0\n", "--width"),
    ("force = 1\n", "a switch"),
    ("ffn = 1.5\nffn_size = 96\n", "exclude each other"),
    ("width = [2, 3]\n", "takes one value"),
    ("width = \n", "invalid TOML"),
    ('layout = "diagonal"\n', "must be one of"),
])
def test_bad_recipes_are_one_line_usage_errors(tmp_path, capsys, text, needle):
    (tmp_path / "bad.toml").write_text(text)
    assert main(["expand", "--config", str(tmp_path / "bad.toml"), "a", "b"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "bad.toml" in err, err


def test_missing_recipe_and_missing_positionals(tmp_path, capsys):
    assert main(["expand", "--config", str(tmp_path / "none.toml")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["expand", "only-src"]) == 2
    assert "needs DST" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("kind", ["fifo", "folder", "huge"])
def test_a_recipe_that_is_not_a_small_plain_file_is_refused_at_once(tmp_path, capsys, kind):
    """A FIFO would block a plain read for ever (the checkpoint reader's guard applies)."""
    path = tmp_path / "r.toml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path.write_text("# " + "x" * (recipe.MAX_RECIPE_BYTES + 1) + "\n")
    assert main(["expand", "--config", str(path), "a", "b"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "r.toml" in err and "--config" in err, err


def test_plan_previews_an_expand_recipe(tmp_path, case_dir, capsys):
    src = case_dir("llama")
    (tmp_path / "grow.toml").write_text(f'src = "{src}"\ndst = "x"\nwidth = 2\nffn_size = 80\ndtype = "bfloat16"\n')
    assert main(["plan", "--config", str(tmp_path / "grow.toml")]) == 0
    assert "ffn=80" in capsys.readouterr().out
    assert not (tmp_path / "x").exists()


def test_without_a_toml_reader_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", None)
    (tmp_path / "r.toml").write_text("width = 2\n")
    with pytest.raises(UsageError, match="pip install tomli"):
        recipe.read(tmp_path / "r.toml")


_scalars = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.text(max_size=30),
                     st.floats(allow_nan=False))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=12), st.one_of(_scalars, st.lists(_scalars, max_size=4)),
                       max_size=8))
def test_toml_writer_reads_back_unchanged(doc):
    """Our writer and the standard library's reader agree on every value (quotes, control
    characters, unicode, the shortest float repr, infinities)."""
    back = tomllib.loads(recipe.dumps(doc, header=["a header", ""]))
    assert back == doc


def test_toml_writer_tables_and_none():
    text = recipe.dumps({"a": None, "b": 1.5e-8, "t": {"x": "y", "n": None}})
    assert tomllib.loads(text) == {"b": 1.5e-8, "t": {"x": "y"}}
    assert math.isnan(tomllib.loads(recipe.dumps({"v": float("nan")}))["v"])


def test_shard_size_option(tmp_path, case_dir, capsys):
    src = case_dir("llama")
    assert expand(src, tmp_path / "s", "--max-shard-size", "30KB") == 0  # every tensor is smaller
    shards = sorted(p.name for p in (tmp_path / "s").glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "s" / "model.safetensors.index.json").is_file()
    assert all(p.stat().st_size < 30_000 + 4096 for p in (tmp_path / "s").glob("*.safetensors"))  # + header
    assert main(["verify", str(src), str(tmp_path / "s")]) == 0
    for bad in ("2XB", "-1MB", "0", "lots"):
        assert expand(src, tmp_path / "t", "--max-shard-size", bad) == 2
        assert "--max-shard-size" in capsys.readouterr().err
    from hyperclone_core.cli import shard_size

    assert shard_size("2GB") == 2 * 10**9 and shard_size("2GiB") == 2 * 2**30 and shard_size("500mb") == 5 * 10**8
    assert shard_size("123") == 123


def test_train_recipe_replays_the_run(tmp_path, capsys):
    """OUT/recipe.toml holds every option; training again from it (to another --out)
    writes the same weights."""
    pytest.importorskip("torch")
    cfg = dict(testing.CASES["llama"], vocab_size=256)
    io.save_checkpoint(tmp_path / "m", cfg, testing.random_weights(cfg, seed=3))
    (tmp_path / "c.txt").write_text("hyperclone grows small models into wide ones. " * 300)
    from hyperclone_core.train.cli import main as train_main

    (tmp_path / "run.toml").write_text(f'model_dir = "{tmp_path / "m"}"\ndata = "{tmp_path / "c.txt"}"\n'
                                       'steps = 4\nbatch_size = 2\nseq_len = 16\neval_every = 2\neval_batches = 1\n'
                                       'lr = 1e-3\nbetas = [0.8, 0.9]\n')
    assert train_main(["--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "a"), "--no-progress",
                       "--seed", "5"]) == 0
    doc = tomllib.loads((tmp_path / "a" / "recipe.toml").read_text())
    assert doc["seed"] == 5 and doc["steps"] == 4 and doc["betas"] == [0.8, 0.9] and doc["lr"] == 1e-3
    # paths relative to OUT (no path of this machine); the replay goes to a fresh folder beside it
    assert doc["out"] == "../a-replay" and doc["model_dir"] == "../m" and "resume" not in doc
    assert str(tmp_path) not in (tmp_path / "a" / "recipe.toml").read_text()
    assert train_main(["--config", str(tmp_path / "a" / "recipe.toml"), "--out", str(tmp_path / "b"),
                       "--no-progress"]) == 0
    a = (tmp_path / "a" / "checkpoint-0000004" / "model.safetensors").read_bytes()
    assert (tmp_path / "b" / "checkpoint-0000004" / "model.safetensors").read_bytes() == a
    assert train_main(["--config", str(tmp_path / "a" / "recipe.toml"), "--no-progress"]) == 0  # as written
    assert (tmp_path / "a-replay" / "checkpoint-0000004" / "model.safetensors").read_bytes() == a
    card = (tmp_path / "a" / "checkpoint-0000004" / "README.md").read_text()  # every checkpoint has a card
    assert "trained 4 steps" in card and "`../../m`" in card and str(tmp_path) not in card
    lineage = (tmp_path / "a" / "checkpoint-0000004" / "hyperclone.json").read_text()
    assert str(tmp_path) not in lineage
    capsys.readouterr()
    assert train_main(["--config", str(tmp_path / "run.toml")]) == 2  # no --out anywhere
    assert "needs --out" in capsys.readouterr().err


def test_the_written_replay_command_runs_as_written_from_anywhere(tmp_path, case_dir, monkeypatch):
    """recipe.toml's header says `hyperclone expand --config recipe.toml`: run from the
    output folder, or naming the recipe from another folder, it writes the same bytes
    into NAME-replay beside the output; a second replay refuses the now-existing folder."""
    src = case_dir("llama")
    out = tmp_path / "runs" / "w"
    assert expand(src, out, "--width", "2", "--seed", "5") == 0
    head = [line for line in (out / "recipe.toml").read_text().splitlines() if line.startswith("#")]
    command = next(line.lstrip("# ").split("  (")[0].strip() for line in head if "--config" in line)
    assert command == "hyperclone expand --config recipe.toml"
    monkeypatch.chdir(out)
    assert main(command.split()[1:]) == 0
    assert weights_bytes(tmp_path / "runs" / "w-replay") == weights_bytes(out)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["expand", "--config", str(out / "recipe.toml")]) != 0  # w-replay exists now: refused
    for f in (out / "recipe.toml", out / "README.md", out / "hyperclone.json"):
        assert str(tmp_path) not in f.read_text(), f


def test_demo_outputs_name_no_path_of_this_machine_and_replay_as_written(tmp_path, monkeypatch):
    """results.json, recipe.toml and loss.png's neighbours hold no absolute path; the
    recipe's replay (run from OUT) writes OUT-replay beside it."""
    pytest.importorskip("torch")
    from hyperclone_core.demo.cli import main as demo_main

    (tmp_path / "t.txt").write_text("".join(f"Paragraph {k}: HyperCloning grows a small model into a wide one.\n\n"
                                            for k in range(2000)))
    monkeypatch.chdir(tmp_path)
    assert demo_main(["--preset", "tiny", "--no-progress", "--threads", "1", "--text", "t.txt", "--out", "d"]) == 0
    for f in (tmp_path / "d").iterdir():
        if f.suffix in (".json", ".toml", ".md"):
            assert str(tmp_path) not in f.read_text(), f
    doc = tomllib.loads((tmp_path / "d" / "recipe.toml").read_text())
    assert doc["text"] == "../t.txt" and doc["out"] == "../d-replay"
    monkeypatch.chdir(tmp_path / "d")
    assert demo_main(["--config", "recipe.toml", "--no-progress"]) == 0
    assert (tmp_path / "d-replay" / "results.json").is_file()
