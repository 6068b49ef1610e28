"""The core trainer on the torch engine: a clone starts at its source's loss and
learns; the symmetry monitor sees symmetric copies stay identical and noisy ones
diverge; resume is bit for bit; checkpoints are HF folders; bad input is refused
with a clear error."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hyperclone_core import Growth, family_for_config, plan  # noqa: E402
from hyperclone_core.train.data import BatchSampler, DataError  # noqa: E402
from hyperclone_core.errors import CheckpointError  # noqa: E402
from hyperclone_core.io import Checkpoint, load_weights  # noqa: E402
from hyperclone_core.run.reference import execute  # noqa: E402
from hyperclone_core.model.testing import CASES, random_weights  # noqa: E402
from hyperclone_core.train import NonFiniteLoss, TrainConfig, TrainError, clone_lr_multipliers, lr_at, symmetry, symmetry_pairs  # noqa: E402
from hyperclone_core.train.checkpoint import newest_valid  # noqa: E402
from hyperclone_core.train.cli import main, plan_of  # noqa: E402
from hyperclone_torch import train  # noqa: E402
from hyperclone_torch.engine import lm_loss  # noqa: E402
from hyperclone_torch.model import Decoder  # noqa: E402

torch.set_num_threads(1)
CFG = CASES["llama"]


def learnable_tokens(n: int = 6000, vocab: int = 96, period: int = 37, seed: int = 0) -> np.ndarray:
    """A repeating random phrase: a tiny model lowers its loss within a few dozen steps."""
    phrase = np.random.default_rng(seed).integers(0, vocab, period)
    return np.resize(phrase, n).astype(np.uint16)


TOKENS = learnable_tokens()
VAL = learnable_tokens(800, seed=0)[5:]


def small_config(**kw) -> TrainConfig:
    base = dict(steps=10, batch_size=4, seq_len=16, lr=3e-3, warmup_steps=2, eval_every=5, eval_batches=2,
                seed=3, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def clone(strategy: str, seed: int = 0):
    weights = random_weights(CFG, seed=1)
    family = family_for_config(CFG)
    p = plan(family, CFG, Growth.of(family.read(CFG), width=2), strategy, seed)
    return Decoder.from_weights(CFG, weights), Decoder.from_weights(p.config, execute(p, weights)), p


@pytest.mark.parametrize("strategy", ["symmetric", "noisy:10"])
def test_clone_starts_at_source_loss_learns_and_symmetry_monitor(strategy):
    source, grown, p = clone(strategy)
    cfg = small_config(steps=50, batch_size=8, eval_every=10, lr=3e-3)
    first = BatchSampler(TOKENS, cfg.batch_size, cfg.seq_len, cfg.seed).batch(0)
    with torch.no_grad():
        source_loss = float(lm_loss(source, torch.from_numpy(first)))
    res = train(grown, cfg, TOKENS, VAL, plan=p)
    losses = res.train_losses
    assert len(losses) == 50
    assert abs(losses[0] - source_loss) <= 1e-5
    assert np.mean(losses[-5:]) < losses[0] - 0.5
    syms = [h["symmetry"] for h in res.evals]
    assert len(syms) == 6  # steps 0, 10, ..., 40 and the final evaluation
    if strategy == "symmetric":
        assert all(s == 1.0 for s in syms)
        assert all(v == 1.0 for v in res.evals[-1]["symmetry_by_kind"].values())
    else:
        assert syms[-1] < syms[0] < 0.999  # noise breaks the symmetry; training widens the gap
    kinds = set(res.evals[-1]["symmetry_by_kind"])
    assert {"attn.q", "mlp.down", "embed"} <= kinds


def test_symmetry_of_plain_execution():
    _, sym_clone, p_sym = clone("symmetric")
    _, noisy_clone, p_noisy = clone("noisy:10")
    s = symmetry(lambda n: sym_clone.get_parameter(n).detach().numpy(), symmetry_pairs(p_sym))
    n = symmetry(lambda n: noisy_clone.get_parameter(n).detach().numpy(), symmetry_pairs(p_noisy))
    assert s["overall"] == 1.0
    assert n["by_kind"]["mlp.down"] < 1.0  # noise sums to zero over in-copies: they differ
    assert n["by_kind"]["embed"] == 1.0    # out-axis copies carry no noise


def test_pairs_point_at_copies_of_the_same_source():
    _, grown, p = clone("symmetric")
    for pair in symmetry_pairs(p):
        take = next(op for op in p.tensor(pair.name).ops
                    if type(op).__name__ == "Take" and op.axis == pair.axis)
        src = p.arrays[take.map]
        assert np.array_equal(src[pair.a], src[pair.b])
        assert not np.any(pair.a == pair.b)


def test_resume_is_bit_for_bit(tmp_path):
    cfg = small_config(steps=10, save_every=0)
    _, a, p = clone("noisy:10")
    full = train(a, cfg, TOKENS, VAL, plan=p)

    _, b, _ = clone("noisy:10")
    part = train(b, small_config(steps=10, out_dir=str(tmp_path / "run")), TOKENS, VAL, plan=p,
                 callback=lambda rec: rec["step"] < 4)
    assert part.steps_done == 5 and newest_valid(tmp_path / "run").name == "checkpoint-0000005"
    _, c, _ = clone("noisy:10", seed=99)  # other noise: the weights must come from the checkpoint
    rest = train(c, small_config(steps=10, out_dir=str(tmp_path / "run"), resume=True), TOKENS, VAL, plan=p)
    assert rest.train_losses == full.train_losses
    assert [h.get("val_loss") for h in rest.history] == [h.get("val_loss") for h in full.history]
    for (n, x), (_, y) in zip(a.state_dict().items(), c.state_dict().items()):
        assert torch.equal(x, y), n
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [h["step"] for h in rest.history]


def test_checkpoint_is_an_hf_folder_of_the_trained_weights(tmp_path, hf_logits):
    _, grown, p = clone("symmetric")
    res = train(grown, small_config(steps=3, out_dir=str(tmp_path / "o")), TOKENS, plan=p)
    folder = tmp_path / "o" / "checkpoint-0000003"
    assert res.checkpoint == str(folder)
    cfg, weights = load_weights(folder)
    assert set(weights) == set(grown.state_dict())
    for n, t in grown.state_dict().items():
        assert np.array_equal(weights[n], t.numpy()), n
    x = np.arange(10)[None] % 96
    with torch.no_grad():
        mine = grown(torch.from_numpy(x)).numpy()
    assert np.abs(hf_logits(folder, x) - mine).max() <= 1e-4 * np.abs(mine).max()
    assert not [p for p in tmp_path.glob("o/.*") if p.name != ".hyperclone-run"]  # no temp folder, no lock left


def test_transformers_model_and_tied_embeddings(tmp_path, case_dir):
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(case_dir("llama_tied"))
    res = train(model, small_config(steps=4, out_dir=str(tmp_path / "t")), TOKENS, VAL)
    assert all(np.isfinite(res.train_losses))
    ck = Checkpoint(tmp_path / "t" / "checkpoint-0000004")
    assert "lm_head.weight" not in ck.names()
    assert np.array_equal(ck.read("model.embed_tokens.weight"), model.model.embed_tokens.weight.detach().numpy())


def test_grad_accumulation_matches_one_big_batch():
    _, a, p = clone("noisy:10")
    _, b, _ = clone("noisy:10")
    r1 = train(a, small_config(steps=4), TOKENS)
    r2 = train(b, small_config(steps=4, grad_accum=2), TOKENS)
    assert np.allclose(r1.train_losses, r2.train_losses, atol=1e-5)


def test_clone_lr_multipliers():
    _, grown, p = clone("symmetric")
    mults = clone_lr_multipliers(p, "inverse_width")
    for t in p.tensors:
        grown_in = len(t.shape) == 2 and t.kind != "embed"
        assert mults.get(t.name, 1.0) == (0.5 if grown_in else 1.0), t.name
    before = {n: t.detach().clone() for n, t in grown.named_parameters()}
    train(grown, small_config(steps=1, clone_lr="inverse_width", warmup_steps=0, weight_decay=0.0), TOKENS, plan=p)
    for n, t in grown.named_parameters():  # Adam's first step moves every entry by lr * multiplier
        step = (t.detach() - before[n]).abs().max().item()
        assert step == pytest.approx(3e-3 * mults.get(n, 1.0), rel=1e-3), n
    with pytest.raises(Exception, match="needs the plan"):
        train(grown, small_config(steps=1, clone_lr="inverse_width"), TOKENS)


def test_lr_schedule():
    cfg = small_config(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(x >= y for x, y in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1)


# ---------------------------------------------------------------- bad input


def test_sequence_longer_than_positions():
    _, grown, p = clone("symmetric")
    with pytest.raises(TrainError, match="--seq-len 65 exceeds the model's 64 positions"):
        train(grown, small_config(seq_len=65), TOKENS)


def test_token_ids_outside_vocab():
    _, grown, _ = clone("symmetric")
    bad = TOKENS.copy()
    bad[100] = 500
    with pytest.raises(DataError, match="token id 500 but the model's vocab has 96"):
        train(grown, small_config(), bad)


def test_resume_of_another_model_is_refused(tmp_path):
    _, grown, p = clone("symmetric")
    train(grown, small_config(steps=2, out_dir=str(tmp_path / "r")), TOKENS)
    source, _, _ = clone("symmetric")
    with pytest.raises(CheckpointError, match="written while training another model .tensor") as err:
        train(source, small_config(steps=4, out_dir=str(tmp_path / "r"), resume=True), TOKENS)
    assert "checkpoint-0000002" in str(err.value)
    with pytest.raises(TrainError, match="--resume"):
        train(grown, small_config(steps=4, out_dir=str(tmp_path / "r")), TOKENS)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    _, grown, _ = clone("symmetric")
    poison = {"on": False}
    grown.register_forward_hook(lambda m, i, out: out * float("nan") if poison["on"] else out)

    def cb(rec):
        poison["on"] = rec["step"] >= 3

    with pytest.raises(NonFiniteLoss, match="at step 4; the step was not applied; the newest valid "
                                            "checkpoint is .*checkpoint-0000004") as err:
        train(grown, small_config(steps=10, save_every=2, out_dir=str(tmp_path / "n")), TOKENS, callback=cb)
    assert err.value.step == 4 and len(err.value.result.train_losses) == 4
    assert newest_valid(tmp_path / "n").name == "checkpoint-0000004"
    _, w = load_weights(tmp_path / "n" / "checkpoint-0000004")
    assert all(np.isfinite(v).all() for v in w.values())


def test_out_of_memory_names_what_to_lower():
    _, grown, _ = clone("symmetric")

    def boom(m, i, out):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    grown.register_forward_hook(boom)
    with pytest.raises(TrainError, match="out of memory on cpu with micro-batches of 4 x 16 tokens: lower --batch-size"):
        train(grown, small_config(), TOKENS)


def test_bad_config_values():
    with pytest.raises(Exception, match="dtype 'float16'"):
        TrainConfig(dtype="float16")
    with pytest.raises(Exception, match="need out_dir"):
        TrainConfig(resume=True)


# ---------------------------------------------------------------- CLI


def test_cli_trains_text_and_resumes(tmp_path, case_dir, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("HyperCloning grows small models into wide ones. " * 60)
    cfg = dict(CASES["llama"], vocab_size=256)
    from hyperclone_core.io import save_checkpoint

    save_checkpoint(tmp_path / "m", cfg, random_weights(cfg, seed=2))
    args = [str(tmp_path / "m"), "--data", str(text), "--out", str(tmp_path / "o"), "--steps", "4",
            "--batch-size", "2", "--seq-len", "16", "--eval-every", "2", "--eval-batches", "1", "--no-progress",
            "--save-every", "2", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["checkpoint"].endswith("checkpoint-0000004")
    records = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert main([*args[:5], "--steps", "6", *args[7:], "--resume"]) == 0
    records = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4, 5, 6]
    assert main([str(tmp_path / "m"), "--data", str(text), "--out", str(tmp_path / "o2"), "--seq-len", "999",
                 "--no-progress"]) == 2
    assert "exceeds the model's 64 positions" in capsys.readouterr().err


def test_cli_rebuilds_the_plan_of_an_expanded_folder(tmp_path, case_dir, capsys):
    from hyperclone_core.expand.checkpoint import expand_checkpoint

    expand_checkpoint(case_dir("llama"), tmp_path / "wide", strategy="symmetric", verify=False, progress=False)
    np.save(tmp_path / "t.npy", TOKENS)
    assert main([str(tmp_path / "wide"), "--data", str(tmp_path / "t.npy"), "--out", str(tmp_path / "o"),
                 "--steps", "3", "--batch-size", "2", "--seq-len", "16", "--eval-every", "1", "--eval-batches", "1",
                 "--no-progress"]) == 0
    records = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert [r["symmetry"] for r in records] == [1.0, 1.0, 1.0, 1.0]


def test_plan_of_reads_plan_json_even_when_the_source_is_gone(tmp_path, case_dir):
    import shutil

    from hyperclone_core.expand.checkpoint import expand_checkpoint

    src = tmp_path / "src"
    shutil.copytree(case_dir("llama"), src)
    expand_checkpoint(src, tmp_path / "wide", strategy="noisy:10", seed=4, verify=False, progress=False)
    rebuilt = plan_of(tmp_path / "wide")
    (tmp_path / "wide" / "plan.json").unlink()
    assert json.loads(plan_of(tmp_path / "wide").to_json()) == json.loads(rebuilt.to_json())  # both routes agree
    shutil.rmtree(src)
    with pytest.warns(UserWarning, match="cannot be rebuilt"):
        assert plan_of(tmp_path / "wide") is None
    assert plan_of(case_dir("llama")) is None  # not a clone


def test_bfloat16_autocast_trains():
    _, grown, p = clone("noisy:10")
    res = train(grown, small_config(steps=3, dtype="bfloat16"), TOKENS, VAL)
    assert all(np.isfinite(res.train_losses)) and grown.get_parameter("lm_head.weight").dtype == torch.float32


def test_cli_checkpoints_are_complete_folders_kept_to_a_limit(tmp_path, capsys):
    """Each checkpoint loads on its own in transformers (model and tokenizer), carries its
    lineage, only the newest N are kept, --resume says where it resumed from, and
    OUT/loss.png is drawn."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    from hyperclone_core.io import save_checkpoint

    words = "hyperclone grows small models into wide ones and trains them".split()
    vocab = {w: i for i, w in enumerate(["[UNK]", *words])}
    cfg = dict(CASES["llama"], vocab_size=96)
    save_checkpoint(tmp_path / "m", cfg, random_weights(cfg, seed=2))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "m" / "tokenizer.json"))
    (tmp_path / "m" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    (tmp_path / "m" / "generation_config.json").write_text(json.dumps({"max_new_tokens": 7}))
    text = tmp_path / "corpus.txt"
    text.write_text(" ".join(words * 200))
    args = [str(tmp_path / "m"), "--data", str(text), "--out", str(tmp_path / "o"), "--steps", "6", "--batch-size", "2",
            "--seq-len", "16", "--eval-every", "2", "--eval-batches", "1", "--no-progress", "--save-every", "2",
            "--save-total-limit", "2"]
    assert main(args) == 0
    kept = sorted(p.name for p in (tmp_path / "o").glob("checkpoint-*"))
    assert kept == ["checkpoint-0000004", "checkpoint-0000006"]
    folder = tmp_path / "o" / kept[-1]
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert tokenizer("wide ones")["input_ids"] == [vocab["wide"], vocab["ones"]]
    assert model.generation_config.max_new_tokens == 7
    lineage = json.loads((folder / "hyperclone.json").read_text())
    assert lineage["step"] == 6 and lineage["trained_from"] == "../../m"  # from the checkpoint: no machine path
    assert lineage["data"]["train"]["tokens"] > 0
    assert (tmp_path / "o" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main([*args[:6], "8", *args[7:], "--resume"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"resumed from checkpoint-0000006 \(step 6, val loss \d+\.\d{4}\)", err), err
