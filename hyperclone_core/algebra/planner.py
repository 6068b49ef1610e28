"""The planner: growth + family + strategy -> a certified, pure-data Plan.

Each destination tensor gets a short program over six ops (``reshape``, ``take``,
``scale``, ``offset``, ``add_noise``, ``cast``: ``program``) that any backend
executes.  Before a plan is returned, ``certify`` proves it preserves the function:

* on every grown ``in`` axis, the mixing coefficients of each output sum to 1 over
  the input copies of every old index (the rule ``coefficients``);
* noise is projected to sum 0 over those same copies (``zero-sum noise``);
* every axis some norm normalizes over grows uniformly (``uniform norm``);
* every config scalar that depends on a grown dim is compensated
  (``compensation``), and inserted layers are exact for the stack (``depth``).
A plan that fails is refused with the tensor, the dim and the rule named.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional

import numpy as np

from . import strategy as strategies
from .certificate import Certificate, certify_coefficients
from ..errors import CertificateError, ConfigError, PlanError
from .growth import AxisMap, ReplicationMap, axis_map
from .noise import seed_for
from .program import AddNoise, Cast, Offset, Reshape, Scale, Take, TensorPlan, op_from_dict, op_to_dict
from ..model.rope import freeze
from ..model.spec import DecoderConfig, Family, Role, expand_pattern, tensor_names

@dataclass(frozen=True)
class Plan:
    """A pure-data expansion: new config, one program per tensor, shared arrays."""

    family: str
    source_config: Mapping[str, Any]
    config: Mapping[str, Any]
    source_decoder: DecoderConfig
    decoder: DecoderConfig
    growth: Mapping[str, Any]
    strategy: str
    seed: int
    tensors: tuple
    arrays: Mapping[str, np.ndarray] = field(repr=False)
    certificate: Optional[Certificate] = None

    @property
    def spec(self) -> Family:
        """The ``Family`` this plan grows (the registry's entry for the source's model_type)."""
        from ..model.families import family_for_config

        return family_for_config(self.source_config)

    @property
    def exact(self) -> bool:
        return self.certificate is not None and self.certificate.exact

    def tensor(self, name: str) -> TensorPlan:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def sources(self) -> set:
        return {t.source for t in self.tensors}

    def _head(self) -> list:
        src, dst = self.source_decoder, self.decoder
        return [f"plan: {self.family}  growth {format_growth(self.growth)}  strategy {self.strategy}  seed {self.seed}",
                f"  hidden {src.hidden} -> {dst.hidden}; ffn {src.ffn} -> {dst.ffn}; heads {src.heads}/{src.kv_heads} "
                f"kv -> {dst.heads}/{dst.kv_heads} kv; layers {src.layers} -> {dst.layers}"]

    def _cert(self) -> list:
        return [self.certificate.summary()] if self.certificate else []

    def __str__(self) -> str:
        return "\n".join(self._head() + [t.describe() for t in self.tensors] + self._cert())

    def brief(self) -> str:
        """``str(plan)`` without the per-tensor programs: the growth and the certificate."""
        count = f"  {len(self.tensors)} tensor programs (hyperclone plan --programs prints them)"
        return "\n".join(self._head() + [count] + self._cert())

    # --------------------------------------------------------------- JSON
    def to_json(self, indent: Optional[int] = 1) -> str:
        def arr(a: np.ndarray):
            a = np.ascontiguousarray(a)
            if a.size <= 64:
                return {"dtype": str(a.dtype), "shape": list(a.shape), "values": a.ravel().tolist()}
            return {"dtype": str(a.dtype), "shape": list(a.shape),
                    "base64": base64.b64encode(a.tobytes()).decode()}

        doc = {
            "format": "hyperclone.plan/1",
            "family": self.family,
            "growth": self.growth,
            "strategy": self.strategy,
            "seed": self.seed,
            "source_config": self.source_config,
            "config": self.config,
            "source_decoder": self.source_decoder.to_dict(),
            "decoder": self.decoder.to_dict(),
            "tensors": [
                {
                    "name": t.name, "source": t.source, "kind": t.kind,
                    "source_shape": list(t.source_shape), "shape": list(t.shape),
                    "strategy": t.strategy, "notes": list(t.notes),
                    "ops": [op_to_dict(o) for o in t.ops],
                }
                for t in self.tensors
            ],
            "arrays": {k: arr(v) for k, v in self.arrays.items()},
            "certificate": None if self.certificate is None else {
                "exact": self.certificate.exact,
                "checks": [list(c) for c in self.certificate.checks],
                "inexact": list(self.certificate.inexact),
                "max_coefficient_error": self.certificate.max_coefficient_error,
            },
        }
        return json.dumps(doc, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        doc = json.loads(text)
        if doc.get("format") != "hyperclone.plan/1":
            raise PlanError("not a hyperclone plan (format key missing or unknown)")

        def arr(d):
            if "values" in d:
                return np.asarray(d["values"], dtype=d["dtype"]).reshape(d["shape"])
            return np.frombuffer(base64.b64decode(d["base64"]), dtype=d["dtype"]).reshape(d["shape"]).copy()

        tensors = tuple(
            TensorPlan(
                name=t["name"], source=t["source"], kind=t["kind"],
                source_shape=tuple(t["source_shape"]), shape=tuple(t["shape"]),
                ops=tuple(op_from_dict(o) for o in t["ops"]), strategy=t["strategy"], notes=tuple(t["notes"]),
            )
            for t in doc["tensors"]
        )
        c = doc["certificate"]
        cert = None if c is None else Certificate(
            exact=c["exact"], checks=tuple(tuple(x) for x in c["checks"]),
            inexact=tuple(c["inexact"]), max_coefficient_error=c["max_coefficient_error"],
        )

        def dec(d):
            d = dict(d)
            for f in fields(DecoderConfig):  # JSON gave lists where the config holds (nested) tuples
                if isinstance(f.default, tuple):
                    d[f.name] = freeze(d.get(f.name) or ())
            if "qkv_layout" not in d:  # plans written before the layout was a config field
                from ..model.families import get_family

                read = get_family(doc["source_config"].get("model_type", doc["family"])).read(doc["source_config"])
                d.update(qkv_layout=read.qkv_layout, fused_gate_up=read.fused_gate_up)
            return DecoderConfig(**d)

        return cls(
            family=doc["family"], source_config=doc["source_config"], config=doc["config"],
            source_decoder=dec(doc["source_decoder"]), decoder=dec(doc["decoder"]),
            growth=doc["growth"], strategy=doc["strategy"], seed=doc["seed"], tensors=tensors,
            arrays={k: arr(v) for k, v in doc["arrays"].items()}, certificate=cert,
        )


def format_growth(g: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in g.items())


# ---------------------------------------------------------------- growth


@dataclass(frozen=True)
class Growth:
    """Target sizes of the grown dims; dims not named keep their size.

    ``sizes`` may name hidden, ffn, kv_heads, q_per_kv, head_dim, experts, embed,
    layers, vocab, positions.  ``layout`` is ``tile`` (the paper's: copies in
    blocks) or ``interleave`` (copies side by side).
    """

    sizes: Mapping[str, int]
    layout: str = "tile"

    @classmethod
    def of(
        cls,
        cfg: DecoderConfig,
        width: float = 2,
        ffn: Optional[float] = None,
        ffn_size: Optional[int] = None,
        heads: Optional[float] = None,
        kv_heads: Optional[float] = None,
        layers: Optional[int] = None,
        layout: str = "tile",
    ) -> "Growth":
        """The CLI's growth options: ratios for width, ffn, heads, kv heads; ``layers``
        is the new total depth.  Defaults: ffn and heads grow with the width
        (head_dim fixed), except under ALiBi, whose slopes depend on the head count (heads
        fixed, head_dim grows); kv heads grow with the heads unless there is one (MQA)."""
        sizes = {"hidden": _scaled("--width", cfg.hidden, width)}
        if ffn_size is not None:
            sizes["ffn"] = int(ffn_size)
        else:
            sizes["ffn"] = _scaled("--ffn", cfg.ffn, width if ffn is None else ffn)
        own = cfg.sizes()
        for dim in ("moe_ffn", "shared_ffn"):  # an MoE stack's other ffn sizes grow by the same ratio
            if dim in own:
                new = own[dim] * sizes["ffn"] / cfg.ffn
                if abs(new - round(new)) > 1e-9:
                    raise PlanError(f"the ffn growth {cfg.ffn} -> {sizes['ffn']} gives the {dim} size {own[dim]} "
                                    f"a non-integer size {new:g}; choose an ffn ratio that keeps it whole")
                sizes[dim] = int(round(new))
        # ALiBi's slopes are a function of the head count: its models keep their heads (width grows head_dim)
        h = (1 if cfg.pos == "alibi" else width) if heads is None else heads
        new_heads = _scaled("--heads", cfg.heads, h)
        if kv_heads is None:
            kv_new = cfg.kv_heads if cfg.kv_heads == 1 else _scaled("--heads", cfg.kv_heads, h)
        else:
            kv_new = _scaled("--kv-heads", cfg.kv_heads, kv_heads)
        if new_heads % kv_new:
            raise PlanError(
                f"--heads gives {new_heads} heads, not a multiple of the {kv_new} kv heads that "
                "--kv-heads gives; choose ratios whose head counts divide"
            )
        sizes["kv_heads"] = kv_new
        sizes["q_per_kv"] = new_heads // kv_new
        if layers is not None:
            sizes["layers"] = int(layers)
        if cfg.embed and "hidden" in sizes:
            pass  # a separate token-embedding width (OPT-350m) keeps its size
        return cls(sizes, layout)

    def to_dict(self) -> dict:
        return dict(self.sizes, layout=self.layout)


def _scaled(option: str, size: int, ratio: float) -> int:
    new = size * ratio
    if ratio < 1:
        raise PlanError(f"{option} {ratio:g} would shrink a dim of {size}: HyperCloning only grows (use >= 1)")
    if abs(new - round(new)) > 1e-9:
        raise PlanError(f"{option} {ratio:g} of a dim of size {size} gives {new:g}, not an integer size")
    return int(round(new))


# ---------------------------------------------------------------- planner


def layer_map(old: int, new: int) -> list:
    """New layer j -> (source layer, is_inserted_copy).  Copies are spread evenly
    and sit right after their source layer."""
    if new < old:
        raise PlanError(f"--layers {new} would remove layers from a {old}-layer model; depth only grows")
    extra = new - old
    after = [min(old - 1, max(0, round((k + 1) * old / (extra + 1)) - 1)) for k in range(extra)]
    out = []
    for i in range(old):
        out.append((i, False))
        out += [(i, True)] * after.count(i)
    return out


class _Arrays:
    """Deduplicating store of the plan's index and coefficient arrays."""

    def __init__(self):
        self.arrays: dict = {}

    def put(self, key: str, value: np.ndarray) -> str:
        if key not in self.arrays:
            self.arrays[key] = np.ascontiguousarray(value)
        return key


def _coefficients(mixing, omap: Optional[AxisMap], imap: AxisMap, rng) -> tuple:
    """Coefficient rows per output copy number: (rows (k_out, M_in), copy number of
    each output index).  Row c holds C[c, copy(i')] for every input index i'."""
    k_out = omap.max_copies if omap is not None else 1
    table, normalize = mixing.table(k_out, imap.max_copies, rng)
    table = np.asarray(table, dtype=np.float64)
    rows = table[:, imap.copy]  # (k_out, M_in)
    if normalize:
        # divide by the row's sum over the copies each old index actually has
        valid = np.arange(table.shape[1])[None, :] < imap.counts[:, None]  # (m_in, k_in)
        rowsum = (table[:, None, :] * valid[None]).sum(-1)  # (k_out, m_in)
        rows = rows / rowsum[:, imap.src]
    cout = omap.copy if omap is not None else np.zeros(1, dtype=np.int64)
    return rows, cout


def plan(
    family: Family,
    hf_config: Mapping[str, Any],
    growth: Growth,
    strategy: Any = None,
    seed: int = 0,
    allow_inexact: bool = False,
    dtype: Optional[str] = None,
    untie: bool = False,
) -> Plan:
    """Plan the expansion of a checkpoint of ``family`` with config ``hf_config``.

    Tied embeddings stay tied (the LM head's 1 / r goes into the final norm's gain or
    project_out) unless ``untie`` or the family has no such tensor; then they are untied."""
    rules = strategies.parse(strategy)
    src_cfg = family.read(hf_config)
    old_sizes = src_cfg.sizes()
    unknown = set(growth.sizes) - set(old_sizes)
    if unknown:
        raise PlanError(f"unknown dims {sorted(unknown)}; growable dims are {sorted(old_sizes)}")
    new_sizes = dict(old_sizes)
    new_sizes.update(growth.sizes)
    new_sizes["heads"] = new_sizes["kv_heads"] * new_sizes["q_per_kv"]
    if src_cfg.pos == "alibi" and new_sizes["heads"] != old_sizes["heads"]:
        raise PlanError(
            f"{family.name} uses ALiBi, whose per-head slopes are a function of the head count: "
            f"{old_sizes['heads']} -> {new_sizes['heads']} heads would change every head's slope; keep the "
            "heads (leave out --heads/--kv-heads: the width then grows head_dim)"
        )
    mqa = old_sizes["kv_heads"] == 1 == new_sizes["kv_heads"] and old_sizes["heads"] > 1  # a multi_query flag
    if new_sizes["q_per_kv"] != old_sizes["q_per_kv"] and "kv_heads" not in family.config_keys.values() \
            and not mqa:
        raise PlanError(
            f"{family.name} has no grouped-query attention (no num_key_value_heads): grow the heads "
            "with --heads alone, not --kv-heads"
        )
    if "head_dim" not in family.config_keys.values() and new_sizes["head_dim"] == old_sizes["head_dim"] \
            and new_sizes["hidden"] != new_sizes["heads"] * new_sizes["head_dim"]:
        if new_sizes["hidden"] < new_sizes["heads"] * old_sizes["head_dim"]:
            raise PlanError(
                f"{family.name} derives head_dim as hidden / heads: {new_sizes['heads']} heads in a hidden size of "
                f"{new_sizes['hidden']} would shrink head_dim below {old_sizes['head_dim']}; grow --width with --heads"
            )
        # head_dim is implicit (hidden / heads): growing hidden faster than heads grows it
        if new_sizes["hidden"] % new_sizes["heads"]:
            raise PlanError(f"{family.name} derives head_dim as hidden / heads, but {new_sizes['hidden']} is not "
                            f"a multiple of {new_sizes['heads']} heads; choose --heads to divide the width")
        new_sizes["head_dim"] = new_sizes["hidden"] // new_sizes["heads"]
        growth = Growth(dict(growth.sizes, head_dim=new_sizes["head_dim"]), growth.layout)
    if "block_heads" in old_sizes:  # CodeGen: heads sit in qkv_blocks blocks; each block's heads grow alike
        blocks = src_cfg.qkv_blocks
        if new_sizes["heads"] % blocks or new_sizes["kv_heads"] != new_sizes["heads"]:
            raise PlanError(f"{family.name} keeps its heads in {blocks} blocks of its fused qkv: the head count "
                            f"({new_sizes['heads']}) must stay a multiple of {blocks}, every head its own kv head")
        new_sizes["block_heads"] = new_sizes["heads"] // blocks
        growth = Growth(dict(growth.sizes, block_heads=new_sizes["block_heads"]), growth.layout)
    if "kv_half" in old_sizes:  # differential attention: its axes run over half the kv heads (spec.DIMS)
        if new_sizes["kv_heads"] % 2:
            raise PlanError(f"{family.name}'s differential attention splits the kv heads in two halves: "
                            f"{new_sizes['kv_heads']} kv heads is odd; choose an even --kv-heads growth")
        new_sizes["kv_half"] = new_sizes["kv_heads"] // 2
        growth = Growth(dict(growth.sizes, kv_half=new_sizes["kv_half"]), growth.layout)
    if "full_kv" in old_sizes:  # Gemma 4: the full layers' own kv heads grow by the kv heads' ratio
        full = old_sizes["full_kv"] * new_sizes["kv_heads"] / old_sizes["kv_heads"]
        if full != int(full) or new_sizes["heads"] % int(full):
            raise PlanError(f"{family.name}'s full layers have {old_sizes['full_kv']} kv heads: the kv growth "
                            f"{old_sizes['kv_heads']} -> {new_sizes['kv_heads']} would give them {full:g}, not a "
                            f"divisor of {new_sizes['heads']} heads; choose another --kv-heads")
        new_sizes["full_kv"] = int(full)
        growth = Growth(dict(growth.sizes, full_kv=new_sizes["full_kv"]), growth.layout)
    if not src_cfg.embed:  # the token embedding is as wide as the hidden state
        new_sizes["embed"] = new_sizes["hidden"]
    maps = {}
    for dim in growth.sizes:
        if dim != "layers" and dim != "heads":
            layout = "interleave" if dim in family.interleaved_dims else growth.layout
            maps[dim] = ReplicationMap(old_sizes[dim], int(new_sizes[dim]), layout)
    if not src_cfg.embed and "hidden" in maps:
        maps["embed"] = maps["hidden"]
    if new_sizes["experts"] != old_sizes["experts"]:
        raise PlanError(
            "growing experts is not exact: duplicated experts compete in the router's top-k; "
            "keep the expert count"
        )
    for dim in ("vocab", "positions", "layers"):
        if new_sizes[dim] < old_sizes[dim]:
            raise PlanError(f"cannot shrink {dim} from {old_sizes[dim]} to {new_sizes[dim]}: HyperCloning only grows")
    for dim in ("vocab", "positions"):
        if new_sizes[dim] != old_sizes[dim]:
            raise PlanError(f"growing {dim} is not supported: new rows would have no source to copy")
    if src_cfg.experts == 0 and new_sizes["experts"] != 1:
        raise PlanError(f"{family.name} has no experts to grow")

    inexact: list = []
    checks: list = []

    # -- plan-wide rules --------------------------------------------------------
    for what, dims in family.normalized_axes(src_cfg).items():
        amap = axis_map([dims], maps, old_sizes)
        if not amap.uniform:
            counts = sorted(set(amap.counts.tolist()))
            raise CertificateError(
                f"rule 'uniform norm': {what} is normalized by a norm, so it must grow by an integer "
                f"factor, but the growth gives old indices {counts} copies "
                f"({old_sizes[dims[0]] if len(dims) == 1 else 'product'} -> {amap.new_size}); "
                "use an integer ratio"
            )
        checks.append(("uniform norm", what, f"{amap.old_size} -> {amap.new_size}, {amap.counts[0]} copies each"))

    head_ratio = 1.0
    if new_sizes["head_dim"] != old_sizes["head_dim"]:
        hmap = maps["head_dim"]
        if src_cfg.pos == "rope":
            raise CertificateError(
                "rule 'compensation': head_dim cannot grow under RoPE (the rotation pairs and "
                "frequencies depend on head_dim); grow heads instead (--heads)"
            )
        if not hmap.uniform:
            raise CertificateError(
                f"rule 'compensation': head_dim grows {hmap.old} -> {hmap.new}, not by an integer "
                "factor; the attention scale can only be compensated for uniform growth"
            )
        r = hmap.new // hmap.old
        # q.k sums r copies; the default scale head_dim**-0.5 shrinks by sqrt(r)
        head_ratio = 1.0 / r if src_cfg.attn_scale else 1.0 / math.sqrt(r)
        checks.append(("compensation", "attention scale", f"head_dim x{r}: q scaled by {head_ratio:g}"))

    new_cfg = src_cfg.with_sizes(new_sizes)
    lmap = layer_map(src_cfg.layers, new_sizes["layers"])
    if new_sizes["layers"] != old_sizes["layers"]:
        if not family.depth_exact(src_cfg):
            msg = (f"rule 'depth': {family.depth_inexact}" if family.depth_inexact else
                   f"rule 'depth': a {src_cfg.placement}-norm stack is not the identity with zeroed "
                   "residual writers (LN(h + 0) != h)")
            if not allow_inexact:
                raise CertificateError(msg + "; pass --inexact to stack layers anyway")
            inexact.append(msg)
        checks.append(("depth", "layers", f"{old_sizes['layers']} -> {new_sizes['layers']}, inserted copies' writers zeroed"))
    if new_cfg.layer_types:
        new_cfg = _replace(new_cfg, layer_types=tuple(src_cfg.layer_types[s] for s, _ in lmap))
    if new_cfg.mlp_types:  # an inserted layer is dense or MoE as its source
        new_cfg = _replace(new_cfg, mlp_types=tuple(src_cfg.mlp_types[s] for s, _ in lmap))
    if new_cfg.nope_layers:  # each inserted layer keeps its source layer's RoPE (or its lack)
        new_cfg = _replace(new_cfg, nope_layers=tuple(src_cfg.nope_layers[s] for s, _ in lmap))

    # tied embeddings: one table serves the embedding (which wants W) and the LM head (which
    # wants W / r when its input grows r-fold).  Keep the tie by folding 1 / r into the tensor
    # that writes the head's input (the final norm's gain, or project_out), where it has one.
    src_roles = {r.kind: r for r in family.roles_for(src_cfg)}
    tie_kept, fold = False, None
    if src_cfg.tie_embeddings and "lm_head" in src_roles and "embed" in src_roles:
        hmap = axis_map(src_roles["lm_head"].axes[1].segments, maps, old_sizes)
        if not hmap.grown:
            tie_kept = True
        elif untie:
            pass
        elif hmap.uniform:
            fold = _head_fold(src_cfg, src_roles, hmap.new_size // hmap.old_size, old_sizes, new_sizes)
            tie_kept = fold is not None
    new_cfg = _replace(new_cfg, tie_embeddings=tie_kept)
    if src_cfg.tie_embeddings:
        checks.append(("compensation", "tied embeddings",
                       "kept tied (the LM head's input does not grow)" if tie_kept and fold is None else
                       f"kept tied: {fold[0]} scaled by {fold[1]:.6g}"
                       + (f" as 1 + w (gain stored as w: offset {fold[1] - 1:.6g})" if fold[2] else "")
                       + " so the shared table serves the grown head" if fold is not None else
                       "untied: the embedding and the LM head need different scales"
                       + (" (asked for)" if untie else "")))

    arrays = _Arrays()
    rng = np.random.default_rng(seed)
    tensors = []
    max_err = 0.0
    src_names = tensor_names(family, src_cfg)
    by_role = {}
    for name, (role, i, e) in src_names.items():
        by_role.setdefault(id(role), {})[(i, e)] = name

    dst_roles = family.roles_for(new_cfg)
    if not tie_kept and src_cfg.tie_embeddings and "lm_head" not in {r.kind for r in dst_roles}:
        raise PlanError(f"{family.name}: untying needs an lm_head role in the family table")
    for role in dst_roles:
        src_role = next((r for r in family.roles_for(src_cfg) if r.pattern == role.pattern), None)
        if src_role is None:
            raise PlanError(f"{family.name}: role {role.pattern} exists only in the grown config")
        layers = [(j, lmap[j]) for j in role.layers(new_cfg)] if role.per_layer else [(None, (None, False))]
        experts = role.indices(new_cfg)
        # a per-head role: each grown head's tensor copies its source head's
        heads_src = axis_map([tuple(role.per_index.split("*"))], maps, old_sizes).src if role.per_head else None
        for j, (src_layer, inserted) in layers:
            for e in experts:
                name = expand_pattern(role.pattern, j, e)
                src_e = None if e is None else int(heads_src[e]) if role.per_head else e % src_cfg.experts
                if role.kind == "lm_head" and src_cfg.tie_embeddings:
                    source = src_names_by_kind(src_names, "embed")
                else:
                    source = expand_pattern(role.pattern, src_layer, src_e)
                if role.kind == "lm_head" and tie_kept:
                    continue
                strat = rules.for_tensor(name, role.kind)
                # GPT-2's scale_attn_by_inverse_layer_idx: layer j's scale is 1 / (j + 1); a source
                # layer moved from index s to j keeps its logits by q x (j + 1) / (s + 1)
                layer_ratio = (j + 1) / (src_layer + 1) if src_cfg.attn_scale_inverse_layer and j is not None else 1.0
                tp, err = _plan_tensor(
                    name, source, role, maps, old_sizes, new_sizes, strat, arrays,
                    np.random.default_rng(rng.integers(2**63)), seed_for(seed, name),
                    zero_writer=inserted and (role.writer or role.identity is not None),
                    head_ratio=head_ratio * layer_ratio, family=family,
                    src_cfg=src_cfg, dtype=dtype, allow_inexact=allow_inexact, inexact=inexact,
                    fold=fold if fold is not None and role.kind in (fold[0], fold[0] + ".bias") else None,
                )
                tensors.append(tp)
                if err is not None and math.isfinite(err):
                    max_err = max(max_err, err)
                    checks.append(("coefficients", name, f"max |sum - 1| = {err:.1e}"))

    try:
        new_hf = family.write_config(hf_config, new_cfg, [s for s, _ in lmap])
    except ConfigError as exc:  # the source config was read already: what fails is writing this growth
        raise PlanError(f"this growth cannot be written as a {family.name} config: {exc}") from None
    cert = Certificate(exact=not inexact, checks=tuple(checks), inexact=tuple(inexact),
                       max_coefficient_error=max_err)
    return Plan(
        family=family.name, source_config=dict(hf_config), config=new_hf,
        source_decoder=src_cfg, decoder=new_cfg, growth=growth.to_dict(),
        strategy=str(rules), seed=seed, tensors=tuple(tensors), arrays=arrays.arrays,
        certificate=cert,
    )


def _replace(cfg, **kw):
    from dataclasses import replace
    return replace(cfg, **kw)


def src_names_by_kind(names: Mapping[str, Any], kind: str) -> str:
    for n, (role, _, _) in names.items():
        if role.kind == kind:
            return n
    raise PlanError(f"no tensor of kind {kind!r}")


def _head_fold(cfg: DecoderConfig, roles: Mapping[str, Role], r: int, old_sizes, new_sizes):
    """(writer kind, factor, unit offset) that keeps a tied LM head exact when its input grows
    r-fold: the writer of the head's input is scaled by 1 / (r c), c being the embedding's
    own compensation (Gemma's sqrt(hidden)); None when no such writer exists (no final
    norm, or one without a gain)."""
    c = math.sqrt(old_sizes["hidden"] / new_sizes["hidden"]) if cfg.embed_scale else 1.0
    factor = 1.0 / (r * c)
    if "proj_out" in roles:
        return ("proj_out", factor, False)
    if cfg.head_act:  # a prediction head (ModernBERT): its norm writes the LM head's input
        return ("norm.head", factor, False) if "norm.head" in roles else None
    if cfg.final_norm and cfg.norm != "layer_noparam" and "norm.final" in roles:
        return ("norm.final", factor, bool(cfg.norm_unit_offset))
    return None


def _plan_tensor(name, source, role: Role, maps, old_sizes, new_sizes, strat, arrays, rng, noise_seed,
                 zero_writer, head_ratio, family, src_cfg, dtype, allow_inexact=False, inexact=None,
                 fold=None) -> tuple:
    ops: list = []  # scales that commute with the gathers go first: they touch source-sized memory
    notes: list = []
    amaps = [axis_map(ax.segments, maps, old_sizes) for ax in role.axes]
    src_shape = tuple(m.old_size for m in amaps)
    shape = tuple(m.new_size for m in amaps)
    for k, m in enumerate(amaps):
        if m.grown:
            ops.append(Take(k, arrays.put(f"src:{role.axes[k].key()}", m.src)))
    out_axes = [k for k, ax in enumerate(role.axes) if ax.direction == "out"]
    in_axes = [k for k, ax in enumerate(role.axes) if ax.direction == "in" and amaps[k].grown]
    err = None
    used = "copy"
    if in_axes:
        if len(in_axes) > 1:
            raise PlanError(f"{name}: more than one grown 'in' axis is not supported")
        ia = in_axes[0]
        oa = next((k for k in out_axes if amaps[k].grown), None)
        try:
            rows, cout = _coefficients(strat.mixing, amaps[oa] if oa is not None else None, amaps[ia], rng)
        except PlanError as exc:
            raise PlanError(f"tensor {name} ({role.kind}), in-axis {role.axes[ia].key()}: {exc}") from None
        try:
            err = certify_coefficients(name, role.axes[ia].key(), rows, amaps[ia])
        except CertificateError as exc:
            if not allow_inexact:
                raise
            inexact.append(str(exc))
            err = float("inf")
        two_d = not np.all(rows == rows[:1])
        if two_d:
            coeff = rows[cout].astype(np.float32)  # (M_out, M_in): output copies read differently
            key = arrays.put(f"coef:{strat.mixing}:{role.axes[oa].key()}:{role.axes[ia].key()}:{_digest(coeff)}", coeff)
            ops.append(Scale((oa, ia), key))
        elif not np.all(rows[0] == 1.0):
            imap = amaps[ia]
            per_source = np.zeros(imap.old_size)
            per_source[imap.src] = rows[0]
            if np.array_equal(per_source[imap.src], rows[0]):
                # the coefficient depends on the old index only (symmetric: 1/k): scale the
                # source before gathering, a pass over source-sized memory instead of the grown
                coeff = per_source.astype(np.float32)
                key = arrays.put(f"coef:{strat.mixing}:{role.axes[ia].key()}:source:{_digest(coeff)}", coeff)
                ops.insert(0, Scale((ia,), key))
            else:
                coeff = rows[0].astype(np.float32)
                key = arrays.put(f"coef:{strat.mixing}:{role.axes[ia].key()}:{_digest(coeff)}", coeff)
                ops.append(Scale((ia,), key))
        if strat.noise_db is not None and amaps[ia].max_copies > 1 and not role.noiseless:
            ops.append(AddNoise(ia, arrays.put(f"src:{role.axes[ia].key()}", amaps[ia].src), float(strat.noise_db), noise_seed))
        used = str(strat)
        if strat.noise_db is not None and role.noiseless:
            notes.append("no noise: this tensor feeds a discrete choice (top-k) that rounding noise would flip")
            used = str(strat.mixing)
    if role.kind == "embed" and src_cfg.embed_scale and new_sizes["hidden"] != old_sizes["hidden"]:
        c = math.sqrt(old_sizes["hidden"] / new_sizes["hidden"])
        ops.insert(0, Scale((), arrays.put(f"const:{c!r}", np.asarray(c, np.float32))))
        notes.append(f"compensation: embeddings are scaled by sqrt(hidden); x{c:.6g} keeps sqrt({old_sizes['hidden']})")
    if head_ratio != 1.0 and role.kind in ("attn.q", "attn.q.bias"):
        ops.insert(0, Scale((), arrays.put(f"const:{head_ratio!r}", np.asarray(head_ratio, np.float32))))
        notes.append(f"compensation: head_dim grew; q x{head_ratio:g} keeps the attention logits")
    if head_ratio != 1.0 and src_cfg.qkv_layout != "separate" and role.kind in ("attn.qkv", "attn.qkv.bias", "attn.o"):
        # fused q|k|v: q, k and v all x sqrt(head_ratio) (q.k by head_ratio), the output projection
        # undoes v's factor
        c = math.sqrt(head_ratio) if role.kind != "attn.o" else 1.0 / math.sqrt(head_ratio)
        ops.insert(0, Scale((), arrays.put(f"const:{c!r}", np.asarray(c, np.float32))))
        notes.append(f"compensation: attention logits kept through the fused qkv (x{c:.6g})")
    if zero_writer:
        ops.insert(0, Scale((), arrays.put("const:0.0", np.asarray(0.0, np.float32))))
        notes.append("depth: inserted layer's residual writer starts at zero")
        used = "zero"
        if role.identity is not None:  # a value that makes the inserted layer the identity
            ops.insert(1, Offset(float(role.identity)))
            notes[-1] = f"depth: inserted layer's {role.kind} starts at {role.identity:g}, its identity"
    if fold is not None:
        _, f, unit_offset = fold
        ops.append(Scale((), arrays.put(f"const:{f!r}", np.asarray(f, np.float32))))
        if unit_offset and not role.kind.endswith(".bias"):
            ops.append(Offset(float(np.float32(f - 1.0))))  # 1 + w' = f (1 + w)
        notes.append(f"compensation: tied LM head kept; the head's input scaled by {f:.6g}")
    if dtype:
        ops.append(Cast(dtype))
    return TensorPlan(name, source, role.kind, src_shape, shape, tuple(ops), used, tuple(notes)), err


def _digest(a: np.ndarray) -> str:
    import hashlib
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()[:12]


__all__ = [
    "AddNoise", "Cast", "Certificate", "Growth", "Offset", "Plan", "Reshape", "Scale", "Take", "TensorPlan",
    "certify_coefficients", "layer_map", "plan", "seed_for",
]
