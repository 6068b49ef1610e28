"""What a grown folder says about itself: the plan's summary (parameters and bytes
before and after, per role), the config.json changes nobody asked for, and the model
card (README.md) that ``hyperclone expand`` writes beside the weights.

The facts come from the plan and the expansion report; this module only counts and
words them, so ``hyperclone plan`` (before any weight moves) and the card (after)
state the same numbers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from ..io.dtypes import FLOAT_CODES
from ..io.paths import inside, open_regular
from ..io.safetensors import code_of, nbytes
from ..model.structure import slots

PAPER = ("Mohammad Samragh, Iman Mirzadeh, Keivan Alizadeh Vahid, Fartash Faghri, Minsik Cho, Moin Nabi, "
         "Devang Naik, Mehrdad Farajtabar. Scaling Smart: Accelerating Large Language Model Pre-training "
         "with Small Model Initialization. arXiv:2409.12903, 2024.")
BIBTEX = """@article{samragh2024scaling,
  title   = {Scaling Smart: Accelerating Large Language Model Pre-training with Small Model Initialization},
  author  = {Samragh, Mohammad and Mirzadeh, Iman and Alizadeh Vahid, Keivan and Faghri, Fartash and
             Cho, Minsik and Nabi, Moin and Naik, Devang and Farajtabar, Mehrdad},
  journal = {arXiv preprint arXiv:2409.12903},
  year    = {2024}
}"""
BASE_CARD = "BASE_MODEL_README.md"
MLX_LM_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "mixtral", "gemma", "gemma2", "gpt_neox")
"""Families mlx-lm loads (backends/hyperclone_mlx/README.md has the details and limits)."""


# ---------------------------------------------------------------- counting


def _size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _count(n: int) -> str:
    for unit, scale in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def config_dtype(config: Mapping[str, Any]) -> str:
    """The dtype config.json states (``torch_dtype`` or ``dtype``), float32 when absent."""
    d = config.get("torch_dtype") or config.get("dtype") or "float32"
    return d if isinstance(d, str) and d in FLOAT_CODES else "float32"


def summary(plan, source_dtype: Callable[[str], str], out_dtype: Optional[str] = None) -> dict:
    """Parameters and bytes before and after, and a per-role table.  Counts are of the
    tensors each checkpoint stores (a tied LM head is the embedding, counted once);
    ``source_dtype(name)`` is a source tensor's stored dtype, ``out_dtype`` the output's
    (None: each tensor keeps its source's)."""
    family = plan.spec
    before = slots(family, plan.source_decoder)
    after = slots(family, plan.decoder)
    sources = {t.name: t.source for t in plan.tensors}
    strategies: dict = {}
    for t in plan.tensors:
        strategies.setdefault(t.kind, set()).add(t.strategy)
    roles: dict = {}

    def row(kind):
        return roles.setdefault(kind, {"kind": kind, "tensors_before": 0, "tensors_after": 0, "params_before": 0,
                                       "params_after": 0, "bytes_before": 0, "bytes_after": 0})

    for name, s in before.items():
        r = row(s.kind)
        r["tensors_before"] += 1
        r["params_before"] += _numel(s.shape)
        r["bytes_before"] += nbytes(s.shape, code_of(source_dtype(name)))
    for name, s in after.items():
        r = row(s.kind)
        r["tensors_after"] += 1
        r["params_after"] += _numel(s.shape)
        r["bytes_after"] += nbytes(s.shape, code_of(out_dtype or source_dtype(sources.get(name, name))))
    for kind, r in roles.items():
        r["strategy"] = ", ".join(sorted(strategies.get(kind, {"-"})))
    table = list(roles.values())
    total = {k: sum(r[k] for r in table) for k in ("params_before", "params_after", "bytes_before", "bytes_after")}
    return {"family": plan.family, "growth": dict(plan.growth), "strategy": plan.strategy, "seed": plan.seed,
            "tied_embeddings": [bool(plan.source_decoder.tie_embeddings), bool(plan.decoder.tie_embeddings)],
            **total, "roles": table}


def format_summary(s: Mapping[str, Any]) -> str:
    """The summary as the first lines of ``hyperclone plan``."""
    pb, pa, bb, ba = s["params_before"], s["params_after"], s["bytes_before"], s["bytes_after"]
    tie = {(True, True): "tied embeddings stay tied", (True, False): "tied embeddings become UNTIED",
           (False, False): "untied LM head", (False, True): "tied"}[tuple(s["tied_embeddings"])]
    lines = [
        f"summary: {s['family']}, {' '.join(f'{k}={v}' for k, v in s['growth'].items())}, strategy {s['strategy']}, "
        f"seed {s['seed']}; {tie}",
        f"  parameters {pb:,} -> {pa:,} ({_count(pb)} -> {_count(pa)}, x{pa / max(pb, 1):.2f}); "
        f"bytes {_size(bb)} -> {_size(ba)}",
        f"  {'role':<16s} {'tensors':>11s} {'parameters before':>18s} {'after':>14s} {'bytes after':>12s}  strategy",
    ]
    for r in s["roles"]:
        tensors = f"{r['tensors_before']} -> {r['tensors_after']}"
        lines.append(f"  {r['kind']:<16s} {tensors:>11s} {r['params_before']:>18,} {r['params_after']:>14,} "
                     f"{_size(r['bytes_after']):>12s}  {r['strategy']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- config changes


def _why(key: str, before: Any, after: Any, plan, untie: bool) -> str:
    family = plan.spec
    if key == "layer_types":
        return ("the per-layer attention pattern is written out: transformers derives it from the layer index, "
                "which depth growth shifts; each inserted layer keeps its source layer's kind")
    if key == "tie_word_embeddings":
        if before and not after:
            return ("the LM head was untied: the embedding and the head need different scales and this model has "
                    "no final-norm gain or project_out to fold the head's 1/r into; parameters grow by one "
                    "vocab x hidden matrix")
        return f"written out explicitly; the source was read as {'tied' if after else 'untied'} (same meaning)"
    if key == "architectures":
        return f"set to the {family.name} class transformers loads"
    if key == "head_dim" or key == family_key(family, "head_dim"):
        return ("written out: hidden_size / num_attention_heads no longer gives the head size, and readers that "
                "derive it would build the wrong shapes")
    if key in family.rope_keys:
        return ("RoPE mirrored at the top level from rope_parameters: mlx-lm and transformers 4.x read only the "
                "top-level key and would silently run their default")
    if key == "rope_scaling":
        return ("RoPE scaling mirrored from rope_parameters (the type also as 'type'): mlx-lm and transformers "
                "4.x read only rope_scaling and would silently run unscaled RoPE")
    note = dict(getattr(family, "notes", ())).get(key)  # a family's own word on a key its writer derives
    return note or "changed by the family's config writer"


def family_key(family, dim: str) -> Optional[str]:
    return next((k for k, d in family.config_keys.items() if d == dim), None)


def config_changes(plan, config: Mapping[str, Any], asked: Mapping[str, str] = (), untie: bool = False) -> dict:
    """Every key of the written ``config`` that differs from the source's: ``asked``
    (dims the growth options set, plus ``asked`` keys -> the option that set them, e.g.
    the dtype) and ``unrequested`` (everything else, each with why)."""
    family = plan.spec
    old, new = plan.source_decoder.sizes(), plan.decoder.sizes()
    old["heads"], new["heads"] = plan.source_decoder.heads, plan.decoder.heads
    grown = {d for d in new if old.get(d) != new[d]}
    src = dict(plan.source_config)
    out: dict = {"asked": [], "unrequested": []}
    for key in sorted(set(src) | set(config)):
        a, b = src.get(key), config.get(key)
        if a == b and (key in src) == (key in config):
            continue
        entry = {"key": key, "before": a, "after": b}
        dim = family.config_keys.get(key)
        if key in dict(asked):
            out["asked"].append(dict(entry, by=dict(asked)[key]))
        elif dim in grown and dim != "head_dim":
            out["asked"].append(dict(entry, by="growth"))
        elif key == "tie_word_embeddings" and untie and a and not b:
            out["asked"].append(dict(entry, by="untie"))
        elif "layers" in grown and isinstance(a, list) and isinstance(b, list) and (
                key == "layer_types" or len(b) == plan.decoder.layers > len(a) == plan.source_decoder.layers):
            # a per-layer list (layer_types, SmolLM3/Llama 4's no_rope_layers ...) extended for the inserted layers
            out["asked"].append(dict(entry, by="--layers (each inserted layer keeps its source layer's kind)"))
        else:
            out["unrequested"].append(dict(entry, why=_why(key, a, b, plan, untie)))
    return out


def _show(v: Any) -> str:
    if v is None:
        return "(absent)"
    text = json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."


def format_changes(changes: Mapping[str, Any]) -> str:
    """Lines for the terminal: the changes nobody asked for, each with why ('' if none)."""
    rows = changes.get("unrequested") or []
    if not rows:
        return ""
    lines = ["config.json changes you did not ask for (recorded in hyperclone.json):"]
    lines += [f"  {r['key']}: {_show(r['before'])} -> {_show(r['after'])}: {r['why']}" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- the model card


def base_model_name(config: Mapping[str, Any], src: Path) -> tuple:
    """(name, is a hub id): config.json's ``_name_or_path`` when it looks like a hub id
    (``org/name``) and is not a folder here, else the source folder's name."""
    name = config.get("_name_or_path")
    if isinstance(name, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not os.path.exists(name):
        return name, True
    return Path(src).resolve().name, False


INHERITED = ("license", "license_name", "license_link", "language", "datasets", "tags")
"""Front-matter keys a grown model's card takes from its base model's card: what the
clone is under and about does not change by growing it."""


def _scalar(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def front_matter(text: str) -> dict:
    """The simple YAML front matter of a model card (``---`` ... ``---``): top-level
    keys with a scalar, a ``[a, b]`` list or ``- item`` lines.  Anything richer is
    skipped, never guessed at."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    out: dict = {}
    key = None
    for line in lines[1:]:
        if line.strip() == "---":
            return out
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_][\w-]*):\s*(.*)$", line)
        if m:
            key, value = m.group(1), m.group(2).strip()
            if value.startswith("[") and value.endswith("]"):
                out[key] = [_scalar(v) for v in value[1:-1].split(",") if v.strip()]
            elif value:
                out[key] = _scalar(value)
            else:
                out[key] = []
            continue
        item = re.match(r"^\s*-\s+(.*)$", line)
        if item and key is not None and isinstance(out.get(key), list):
            out[key].append(_scalar(item.group(1)))
        elif not line.startswith((" ", "\t")):
            key = None
    return {}  # no closing ---: not front matter


def inherited(src) -> dict:
    """The base card's ``INHERITED`` keys (empty when the source has no card)."""
    path = Path(src) / "README.md"
    try:
        with open_regular(path, "README.md") as f:
            text = f.read(1 << 20).decode("utf-8", "replace")
    except Exception:  # no card, or one we may not read: nothing is inherited
        return {}
    fm = front_matter(text)
    return {k: fm[k] for k in INHERITED if fm.get(k) not in (None, "", [])}


def _yaml_value(key: str, value: Any) -> list:
    if isinstance(value, list):
        return [f"{key}:"] + [f"- {v}" for v in value]
    return [f"{key}: {value}"]


def _front_matter(base: str, hub_id: bool, family: str, base_meta: Mapping[str, Any] = (),
                  revision: Optional[str] = None) -> str:
    meta = dict(base_meta)
    tags = ["hyperclone", "hypercloning", family]
    tags += [t for t in (meta.pop("tags", None) or []) if t not in tags]
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation"]
    for k in INHERITED:
        if k in meta:
            lines += _yaml_value(k, meta[k])
    lines += _yaml_value("tags", tags)
    if hub_id:
        lines += [f"base_model: {base}"]
        if revision:
            lines += [f"base_model_revision: {revision}"]
    return "\n".join(lines + ["---", ""])


def model_card(report: Mapping[str, Any], dst, src, src_config: Mapping[str, Any], base_card: bool) -> str:
    """README.md of a grown folder, from its hyperclone.json report (``dst`` and ``src``
    as the user named them: the card's commands use them)."""
    dst, src = Path(dst), Path(src)
    source_hub = report.get("source_hub")
    base, hub = (source_hub["repo_id"], True) if source_hub else base_model_name(src_config, src)
    base_meta = inherited(src)
    fam = report["family"]
    p = report["parameters"]
    sizes = report["sizes"]
    folder = dst.name  # as loaded from the folder above it; on the Hub, the repo id
    v = report.get("verification")
    cert = report["certificate"]
    growth_rows = [f"| {d} | {sizes['before'][d]} | {sizes['after'][d]} |" for d in sizes["after"]
                   if sizes["before"].get(d) != sizes["after"][d]]
    out = [_front_matter(base, hub, fam, base_meta,
                         (source_hub.get("revision") or source_hub.get("commit")) if source_hub else None),
           f"# {dst.name}: {base} grown by HyperCloning", "",
           f"This {fam} model was grown from **{base}** with [hyperclone](https://arxiv.org/abs/2409.12903) "
           f"{report['hyperclone_version']}: every weight of the base model is copied into a wider"
           + (" and deeper" if sizes["before"]["layers"] != sizes["after"]["layers"] else "")
           + " model that computes the same function, so training it starts from what the base model knows.",
           "It has not been trained since it was grown: its outputs are the base model's.", "",
           "## Growth", "",
           f"- base model: {base}"
           + (f" at revision {source_hub['revision']}" if source_hub and source_hub.get("revision") else "")
           + (f" (commit {source_hub['commit']})" if source_hub and source_hub.get("commit") else "")
           + (f"; its own model card is kept as [{BASE_CARD}]({BASE_CARD})" if base_card else "")
           + (f"; {', '.join(k for k in INHERITED if k in base_meta)} are the base model's, from its card"
              if base_meta else ""),
           f"- options: `{report.get('options') or 'defaults'}`",
           f"- strategy: `{report['strategy']}`, seed {report['seed']}",
           f"- parameters: {p['before']:,} -> {p['after']:,} (x{p['after'] / max(p['before'], 1):.2f}); "
           f"stored bytes {_size(p['bytes_before'])} -> {_size(p['bytes_after'])} ({report['dtype']})",
           "", "| dim | before | after |", "|---|---|---|", *growth_rows, "",
           "## Function preservation", "",
           f"- certificate: {'EXACT' if cert['exact'] else 'NOT EXACT'}, {len(cert['checks'])} checks passed "
           f"before any weight moved (max coefficient-sum error {cert['max_coefficient_error']:.1e})"]
    out += [f"  - not exact: {r}" for r in cert.get("inexact", [])]
    if v and v.get("finite"):
        out.append(f"- measured: max |logit difference| {v['max_abs_diff']:.3e} on {v['tokens'][0]}x{v['tokens'][1]} "
                   f"random tokens, relative {v['relative']:.2e} (tolerance {v['tolerance']:g} for {v['dtype']}; "
                   f"{'passed' if v['passed'] else 'FAILED, written because --inexact allowed it'}; "
                   f"{v['backend']} backend)")
    elif v:
        out.append("- measured: the logits were not finite (written because --inexact allowed it)")
    else:
        out.append(f"- measured: not checked (--no-verify); run `hyperclone verify BASE {folder}` with the base "
                   "model's folder or hub id as BASE")
    changes = report.get("config_changes", {}).get("unrequested") or []
    if changes:
        out += ["", "## config.json changes beyond the growth", ""]
        out += [f"- `{c['key']}`: {_show(c['before'])} -> {_show(c['after'])}: {c['why']}" for c in changes]
    out += ["", "## Load it", "",
            f"`{folder}` below is this folder, as seen from the folder above it; once it is pushed to the "
            f"Hugging Face Hub, put its repo id there (`ORG/{folder}`).", "", "transformers:", "", "```python",
            "from transformers import AutoModelForCausalLM",
            f"model = AutoModelForCausalLM.from_pretrained({folder!r})",
            "```", "", "hyperclone's PyTorch backend (`pip install 'hyperclone[torch]'`):", "", "```python",
            "import torch", "import hyperclone_torch",
            f"model = hyperclone_torch.Decoder.from_pretrained({folder!r})",
            "logits = model(torch.tensor([[1, 2, 3]]))",
            "```", "", "JAX (`pip install 'hyperclone[jax]'`; `mesh=` places each tensor on its shards):", "",
            "```python", "import hyperclone_jax",
            f"config, params = hyperclone_jax.load_pretrained({folder!r})", "```"]
    if fam in MLX_LM_FAMILIES:
        out += ["", "mlx-lm (`pip install 'hyperclone[mlx]'`; needs the tokenizer files, copied from the base "
                "model when it had them):", "", "```python", "import mlx_lm",
                f"model, tokenizer = mlx_lm.load({folder!r})", "```"]
    out += ["", "Train it (the clone-aware trainer reads `plan.json` for its symmetry monitor):", "", "```bash",
            f"hyperclone train {folder} --data corpus.txt --out runs/{dst.name}", "```", "",
            "Replay the growth exactly (same bytes; the same noise, drawn from the same seed) into a fresh folder "
            f"`{folder}-replay` beside this one, from the base model where the recipe found it:", "", "```bash",
            f"hyperclone expand --config {folder}/recipe.toml", "```", "",
            "## Files", "",
            "- `config.json`, `*.safetensors`: the grown model; tokenizer and generation files are the base model's",
            "- `hyperclone.json`: source, growth, strategy, seed, certificate, measured error, config changes",
            "- `plan.json`: the plan (per tensor, its program over six ops)",
            "- `recipe.toml`: every option of the run, for `hyperclone expand --config`",
            "- `.hyperclone-output`: hyperclone's mark that it wrote this folder (what lets a later run "
            "replace it); leave it out of an upload: `huggingface-cli upload ORG/NAME . --exclude "
            "'.hyperclone-output'`",
            "", "## Reference", "", PAPER, "", "```bibtex", BIBTEX, "```", ""]
    return "\n".join(out)


def trained_card(folder_name: str, hf_config: Mapping[str, Any], lineage: Mapping[str, Any],
                 trainer: Mapping[str, Any], base_meta: Mapping[str, Any] = ()) -> str:
    """README.md of a training checkpoint: what it is (step, loss, tokens), where it came
    from (the lineage ``hyperclone.json`` records: the folder or hub id trained from, the
    growth that made it, the growths during the run), how to load it and go on."""
    cfg = dict(trainer.get("config") or {})
    step = int(trainer.get("step") or lineage.get("step") or 0)
    fam = str(hf_config.get("model_type", "decoder"))
    start = str(lineage.get("trained_from", "?"))
    hub = bool(re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w.-]+)?", start)) and not start.startswith(".")
    clone = lineage.get("clone") or {}
    base = clone.get("source_hub") or (start if hub else None)
    tokens = step * int(cfg.get("batch_size") or 0) * int(cfg.get("seq_len") or 0)
    val = trainer.get("val_loss")
    out = [_front_matter(str(base).split("@")[0] if base else start, bool(base), fam, base_meta),
           f"# {folder_name}: {fam} trained {step:,} steps with hyperclone", "",
           f"Step {step:,} of {cfg.get('steps', '?')} of a `hyperclone train` run "
           f"([hyperclone](https://arxiv.org/abs/2409.12903) {lineage.get('hyperclone_version', '')})"
           + (f", validation loss {val:.4f}" if isinstance(val, (int, float)) else "") + ".", "",
           "## Lineage", "",
           f"- trained from: `{start}`" + (" (relative to this folder)" if not hub else " (hub id)"),
           f"- tokens seen: {tokens:,} ({cfg.get('batch_size')} sequences x {cfg.get('seq_len')} tokens per step)"
           if tokens else "- tokens seen: not recorded",
           f"- data: {json.dumps(lineage.get('data'))}" if lineage.get("data") else "- data: not recorded",
           f"- backend: {lineage.get('backend', '?')}"]
    if clone:
        out.append(f"- the model trained from was grown by HyperCloning from `{clone.get('source', '?')}`: "
                   f"growth {json.dumps(clone.get('growth'))}, strategy `{clone.get('strategy')}`, seed "
                   f"{clone.get('seed')}")
    for g in lineage.get("growths") or []:
        out.append(f"- grown during the run at step {g.get('step')}: `{g.get('options')}`")
    if base_meta:
        out.append(f"- {', '.join(k for k in INHERITED if k in base_meta)} are those of the model trained from")
    out += ["", "## Load it", "",
            f"`{folder_name}` is this folder as seen from the run's folder; on the Hub, its repo id.", "",
            "```python", "from transformers import AutoModelForCausalLM",
            f"model = AutoModelForCausalLM.from_pretrained({folder_name!r})", "```", "",
            "Continue the run, from the run's folder one level up (its recipe is there):", "", "```bash",
            "hyperclone train --config recipe.toml --out . --resume", "```", "",
            "`trainer/` holds the optimizer state the continuation needs; leave it out of an upload of the weights "
            "alone (`huggingface-cli upload ORG/NAME . --exclude 'trainer/*'`).", "",
            "## Reference", "", PAPER, ""]
    return "\n".join(out)


def facts(plan, config: Mapping[str, Any], source_dtype: Callable[[str], str], dtype: Optional[str]) -> dict:
    """What hyperclone.json records beyond the run: sizes and parameter counts before
    and after, and every config.json change (asked for, or not, with why)."""
    s = summary(plan, source_dtype, dtype)
    asked = {k: "--dtype" for k in ("torch_dtype", "dtype") if dtype and k in config}
    sizes = {"before": dict(plan.source_decoder.sizes(), heads=plan.source_decoder.heads),
             "after": dict(plan.decoder.sizes(), heads=plan.decoder.heads)}
    return {"sizes": sizes,
            "parameters": {"before": s["params_before"], "after": s["params_after"],
                           "bytes_before": s["bytes_before"], "bytes_after": s["bytes_after"]},
            "config_changes": config_changes(plan, config, asked)}


def write_docs(tmp, src, dst, report: dict, source_config: Mapping[str, Any], options: Mapping[str, Any]) -> None:
    """Into the folder being written: the source's card as BASE_MODEL_README.md, the
    model card README.md, and recipe.toml (the call's options, resolved).  Records the
    base card's name in ``report``."""
    from ..console import recipe

    base_card = copy_base_card(src, tmp)
    report["base_model_card"] = BASE_CARD if base_card else None
    Path(tmp, "README.md").write_text(model_card(report, dst, src, source_config, base_card), encoding="utf-8",
                                      errors="backslashreplace")  # a path's non-UTF-8 bytes shown escaped
    recipe.write(Path(tmp) / "recipe.toml", recipe.for_expand(options, report["strategy"]),
                 recipe.header("expand", report["hyperclone_version"], replay_into=recipe.replay_folder(dst)))


def copy_base_card(src: Path, tmp: Path) -> bool:
    """Keep the source's README.md as the base model's card (a regular file inside
    ``src`` only, like every file a checkpoint names)."""
    p = Path(src) / "README.md"
    if not os.path.lexists(p):
        return False
    inside(src, "README.md", "README.md")
    with open_regular(p, "README.md") as f, open(Path(tmp) / BASE_CARD, "wb") as out:
        shutil.copyfileobj(f, out)
    return True


__all__ = ["BASE_CARD", "INHERITED", "PAPER", "base_model_name", "config_changes", "config_dtype", "copy_base_card",
           "facts", "format_changes", "format_summary", "front_matter", "inherited", "model_card", "summary",
           "trained_card", "write_docs"]
