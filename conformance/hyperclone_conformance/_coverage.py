"""The protocol surface and the cases that cover it: a table the suite checks
against the protocol itself (``test_coverage.py``).  Kept free of pytest.

The surface is *read*, not remembered: the members of the protocol classes
(``run.protocol``, ``train.engine``), the optional hooks their docstrings name
(````name(...)````, ````name=````), every ``getattr(backend, "...")`` the core makes
on a backend or an engine, the decoder's ``ArrayOps`` hooks and every
``DecoderConfig`` field.  Adding any of them without a row here fails the suite,
and every row names the tests that would fail if a backend got it wrong.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

FWD = "test_forward.py::test_forward_matches_oracle"
PROG = "test_programs.py::test_program_matches_oracle"
REACH = "test_coverage.py::test_every_optional_hook_the_backend_has_is_reached"
STREAM = "test_streaming.py::test_row_blocks_match_the_oracle"
POWER = "test_streaming.py::test_noise_power_hook"
CKPT = "test_checkpoint.py::test_checkpoint_round_trip"
PRES = "test_preservation.py::test_function_preservation"
PRES16 = "test_preservation.py::test_function_preservation_bf16"
BF16P = "test_programs.py::test_bfloat16_programs_are_bit_for_bit"
NOISE = "test_programs.py::test_noise_depends_on_the_tensor_seed"
FIRST = "test_train.py::test_first_loss_through_the_loop_is_the_source_loss"
GRADS = "test_train.py::test_gradients_match_finite_differences_of_the_oracle"
ADAMW = "test_train.py::test_update_is_adamw_in_closed_form"
ACCUM = "test_train.py::test_accumulation_equals_one_big_batch"
LOOP = "test_train.py::test_loop_hands_the_schedule_and_the_batches_and_losses_follow_them"
RESUME = "test_train.py::test_resume_is_bit_for_bit_and_the_checkpoint_is_neutral"
BF16T = "test_train.py::test_bfloat16_compute_keeps_float32_master_weights"
DIST = "test_train.py::test_distributed_workers_match_one_worker"
SURFACE = "test_engine.py::test_engine_surface"
FRESH = "test_engine.py::test_export_before_the_first_step_changes_nothing"
STATE = "test_engine.py::test_exported_state_is_full_float32_by_name"
GUARD = "test_engine.py::test_non_finite_step_changes_nothing"
EVAL = "test_engine.py::test_evaluate_is_the_mean_over_batches"
MODES = "test_engine.py::test_parallel_modes_and_devices"

HOOKS = {
    # Backend
    "name": (SURFACE, REACH), "capabilities": (REACH,), "version": (REACH,), "device_name": (REACH,),
    # ExpandBackend: the primitives every program runs on
    "asarray": (PROG,), "to_numpy": (PROG,), "shape": (PROG,), "take": (PROG,), "scale": (PROG,),
    "zero_sum_noise": (PROG, STREAM, NOISE), "mean_square": (PROG, STREAM), "add_scaled": (PROG, STREAM),
    "reshape": (PROG, "test_programs.py::test_reshape_programs_match_the_oracle"), "cast": (BF16P,),
    # ExpandBackend: optional fast paths (each reached, when the backend has it: REACH)
    "scale_": (PROG, REACH), "scale_take": (PROG, REACH), "take_axes": (PROG, REACH),
    "add_zero_sum_noise": (PROG, NOISE, REACH), "run_whole_program": (PROG, REACH),
    "add_zero_sum_noise_power": (STREAM, POWER, REACH), "row_workers": (STREAM,),
    "save_checkpoint": (CKPT,), "load_checkpoint": (CKPT,),
    # ForwardBackend
    "forward": (FWD, PRES), "dtype=": (PRES16,),
    "lazy_weights": ("test_forward.py::test_forward_reads_stored_tensors",),
    # TrainBackend / Launcher
    "engine": (FIRST, SURFACE), "launch_command": (DIST, MODES), "worker_exits_hard": (DIST,),
    "parallel_modes": (MODES, DIST), "check_device": (MODES,),
    # Engine
    "backend": (SURFACE,), "config": (SURFACE,), "names": (SURFACE, STATE), "shapes": (SURFACE, STATE),
    "rank": (SURFACE,), "world": (SURFACE, DIST), "step": (ADAMW, ACCUM, LOOP, GUARD),
    "gradients": (GRADS, ACCUM, ADAMW), "evaluate": (EVAL, RESUME), "params": (SURFACE, LOOP),
    "export_state": (FRESH, STATE, ADAMW), "import_state": (FRESH, RESUME, GUARD),
    "barrier": (SURFACE,), "close": (SURFACE,),
    "set_threads": (LOOP, RESUME),  # the loop's thread tuner drives it (threads=0); calling it here would pin the session's count
    # the decoder's ArrayOps hooks (a backend's forward overrides them; FWD runs every family)
    "ArrayOps.compute_dtype": (PRES16,), "ArrayOps.low_precision": (PRES16,), "ArrayOps.astype": (FWD, PRES16),
    "ArrayOps.constant": (FWD,), "ArrayOps.stop_gradient": (GRADS,), "ArrayOps.linear": (FWD,),
    "ArrayOps.embed": (FWD,), "ArrayOps.rsqrt": (FWD,), "ArrayOps.erf": (FWD,), "ArrayOps.act": (FWD,),
    "ArrayOps.silu": (FWD,), "ArrayOps.relu": (FWD,), "ArrayOps.gelu": (FWD,), "ArrayOps.gelu_tanh": (FWD,),
    "ArrayOps.relu2": (FWD,), "ArrayOps.xielu": (FWD,), "ArrayOps.expm1": (FWD,),  # type_arcee, type_apertus
    "ArrayOps.softmax": (FWD,), "ArrayOps.rms_norm": (FWD,), "ArrayOps.layer_norm": (FWD,),
    "ArrayOps.rope": (FWD, "test_coverage.py::test_forward_cases_are_sensitive_to_their_flags"),
    "ArrayOps.attention": (FWD, "test_coverage.py::test_forward_cases_are_sensitive_to_their_flags"),
    "ArrayOps.top_k": (FWD, GRADS),
}
"""Every member of the protocol surface -> the tests that fail if a backend gets it wrong."""

DIMS = ("family", "vocab", "hidden", "ffn", "moe_ffn", "shared_ffn", "layers", "heads", "kv_heads", "head_dim",
        "positions", "embed", "experts", "experts_per_tok")
"""``DecoderConfig`` fields that are sizes (grown by the matrix's growths, not flags)."""

FLAGS = {
    "norm": ("layer", "layer_noparam"), "norm_eps": (1e-6,), "norm_unit_offset": (True,),
    "placement": ("post", "sandwich", "post_sublayer"), "parallel_residual": (True,), "final_norm": (False,),
    "mlp": ("plain",), "fused_gate_up": (True,), "qkv_layout": ("concat", "per_head", "grouped", "blocked"),
    "act": ("relu", "gelu", "gelu_pytorch_tanh", "relu2", "xielu"), "pos": ("learned", "alibi"), "rope_theta": (100.0,),
    "rotary_dim": (4,), "learned_pos_offset": (2,), "qk_norm": ("head", "full"), "qkv_bias": (True,),
    "o_bias": (True,), "mlp_bias": (True,), "norm_bias": (True,), "tie_embeddings": (True,),
    "embed_scale": (True,), "attn_scale": (2 ** -0.5,), "attn_softcap": (50.0, 1.0), "final_softcap": (30.0, 2.0),
    "clip_qkv": (8.0, 0.5), "sliding_window": (3, 4), "layer_types": ("sliding_attention", "full_attention"),
    "rope_type": ("linear", "dynamic", "yarn", "longrope", "llama3", "proportional"),
    "rope_interleaved": (True,),
    "first_attn_norm": (False,), "head_act": ("silu",), "head_dense_bias": (True,),
    "nope_layers": (True,), "rope_sliding": ("rope_theta", "rope_type", "rope_scaling"), "qk_norm_after_rope": (True,),
    "rope_scaling": ("factor", "short_factor", "long_factor", "low_freq_factor", "high_freq_factor",
                     "original_max_position_embeddings", "attention_factor", "max_position_embeddings",
                     "partial_rotary_factor"),
    "embed_multiplier": (3.0,), "residual_multiplier": (0.5,), "logit_scale": (0.25,),
    "rope_reverse": (True,), "q_scale_beta": (0.1,), "q_scale_period": (4,),
    "kv_lora": (16,), "q_lora": (16,), "nope_dim": (8,), "v_dim": (8, 16), "moe_group_top": (1,),
    "index_topk": (4, 5), "index_heads": (8,), "index_dim": (8, 6), "index_rope_interleaved": (True,),
    "shared_block_norm": (True,), "qk_norm_type": ("layer",), "qkv_blocks": (4,), "shared_scale": (0.5,),
    "experts_stacked": ("in_out", "out_in", "flat"), "gate_up_interleaved": (True,), "expert_glu": ("clamped",),
    "glu_alpha": (1.5,), "glu_limit": (0.3,), "attn_chunk": (4,), "qk_norm_skip_nope": (True,),
    "attn_temp_floor": (2,), "attn_temp_scale": (0.5,), "moe_input_weighted": (True,), "v_scale": (0.6,),
    "mlp_types": ("dense", "moe"), "moe_renorm": (False,), "moe_scoring": ("sigmoid", "sparsemixer"), "moe_groups": (2,),
    "moe_topk_groups": (1,), "moe_scale": (2.5,), "clip_after_qk_norm": (True,), "router_jitter": (0.3,), "head_bias": (True,),
    "transposed_linear": (True,), "embed_norm": (True,), "attn_scale_inverse_layer": (True,),
    "moe_bias_on_logits": (True,), "attn_gate_act": ("softplus",), "attn_gate_per_head": (True,),
    "router_softcap": (1.0,), "transposed_kinds": ("moe.router", "moe.shared.up", "moe.shared.down"),
    "full_attn_scale": (2.0,),
    "diff_attn": (True,), "v_norm": (True,), "dyn_keep": (4,), "k_eq_v": (True,), "full_head_dim": (32,), "full_kv_heads": (1,),
}
"""Every structural ``DecoderConfig`` flag -> the non-default values some forward case
(``_suite.CASES`` or ``_suite.FORWARD_CASES``) gives it (a tuple flag: its items;
``rope_scaling``: the parameter names)."""

SENSITIVE = [
    ("rope_theta", "llama_rope_base", (10000.0,), 100),
    ("sliding_window", "mistral_window", ("+1", 0), 100),
    ("attn_scale", "gemma2_scale", (0.0,), 100),
    ("attn_softcap", "gemma2_softcap", (0.0,), 100),
    ("final_softcap", "gemma2_softcap", (0.0,), 100),
    ("rotary_dim", "gpt_neox", (0,), 100),
    ("clip_qkv", "olmo_clip", (0.0,), 100),
    ("learned_pos_offset", "opt", (0,), 100),
    ("embed_scale", "gemma", (False,), 100),
    ("norm_unit_offset", "gemma", (False,), 100),
    ("parallel_residual", "gpt_neox", (False,), 100),
    ("rope_interleaved", "type_glm", (False,), 100),
    ("index_topk", "type_deepseek_v32", (64, "+1"), 100),
    ("index_rope_interleaved", "type_glm_moe_dsa", (False,), 100),
    ("moe_group_top", "type_deepseek_v2", (2,), 100),
    ("rope_interleaved", "type_deepseek_v3", (False,), 100),
    ("nope_layers", "type_smollm3", ((),), 100),
    ("rope_sliding", "type_gemma3_text", ((),), 100),
    ("qk_norm_after_rope", "type_hunyuan_v1_dense", (False,), 100),
    ("head_act", "type_modernbert-decoder", ("",), 100),
    ("rope_reverse", "type_nanochat", (False,), 100),
    ("glu_limit", "type_gpt_oss", (7.0,), 100),
    ("gate_up_interleaved", "type_gpt_oss", (False,), 100),
    ("attn_chunk", "type_llama4_text", (0, "+1"), 100),
    ("attn_temp_scale", "type_llama4_text", (0.0,), 100),
    ("moe_input_weighted", "type_llama4_text", (False,), 100),
    ("qk_norm_skip_nope", "type_llama4_text", (False,), 100),
    ("v_scale", "type_mimo_v2_flash", (1.0,), 100),
    ("q_scale_beta", "type_ministral3", (0.0,), 100),
    ("residual_multiplier", "type_granite", (1.0,), 100),
    ("embed_multiplier", "type_granite", (1.0,), 100),
    ("logit_scale", "type_granite", (1.0,), 100),
    ("norm_unit_offset", "type_nemotron", (False,), 100),
    *[("rope_type", f"rope_{t}", ("default",), 100) for t in FLAGS["rope_type"]],
    ("attn_scale_inverse_layer", "type_gpt2", (False,), 100),
    ("embed_norm", "type_bloom", (False,), 100),
    ("shared_block_norm", "type_cohere", (False,), 100),
    ("qk_norm_type", "type_persimmon", ("rms",), 100),
    ("qkv_blocks", "type_codegen", (2,), 100),
    ("shared_scale", "type_cohere2_moe", (1.0,), 100),
]
"""(flag, case, wrong values, k): the oracle run on the case with the flag set to a wrong
value ("+1": one more) differs by at least k times the float32 bound, so a backend that
ignores the flag (or is one off) fails its forward case by that much."""

ENGINE_RULES = {
    "loss is the mean next-token cross entropy": (EVAL, LOOP, FIRST),
    "average them (over micro-batches": (ACCUM,),
    "then over data-parallel ranks": (DIST,),
    "clip by the global norm": (ADAMW,),
    "before clipping": (ADAMW,),
    "unless loss or gradient is not finite": (GUARD,),
    "left parameters and optimizer state untouched": (GUARD,),
    "parameters and moments stay float32": (BF16T,),
    "return full arrays on every rank": (STATE, DIST),
    "continues a run bit for bit": (FRESH, RESUME),
    "the number of optimizer steps taken": (FRESH, ADAMW),
    "float32 parameters (the master copy)": (STATE, BF16T),
}
"""A rule as the ``Engine``/``StepResult``/``EngineState`` docstrings word it -> its tests."""


# ---------------------------------------------------------------- reading the protocol

BACKEND_VARS = ("backend", "bk", "engine", "eng")
"""Names the core gives a backend or an engine object where it probes an optional hook."""


def protocol_classes() -> tuple:
    from hyperclone_core.run import protocol
    from hyperclone_core.train import engine

    return (protocol.Backend, protocol.ExpandBackend, protocol.ForwardBackend, protocol.TrainBackend,
            engine.Engine, engine.Launcher)


def protocol_members() -> set:
    """Attributes and methods the protocol classes declare, plus the optional hooks and
    keywords their docstrings name (````name(```` and ````name=````)."""
    out = set()
    for cls in protocol_classes():
        out |= set(getattr(cls, "__annotations__", {}))
        out |= {k for k, v in vars(cls).items() if inspect.isfunction(v) and not k.startswith("_")}
        doc = cls.__doc__ or ""
        out |= set(re.findall(r"``(\w+)\(", doc))
        out |= {k + "=" for k in re.findall(r"``(\w+)=``", doc)}
    return out


def core_probes(room: str = "") -> set:
    """Every ``getattr(<backend or engine>, "name", ...)`` in ``hyperclone_core`` (or in
    one room of it: ``"run"``)."""
    import hyperclone_core

    out = set()
    for path in (Path(hyperclone_core.__file__).parent / room).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                    and len(node.args) >= 2 and isinstance(node.args[0], ast.Name)
                    and node.args[0].id in BACKEND_VARS and isinstance(node.args[1], ast.Constant)
                    and isinstance(node.args[1].value, str) and not node.args[1].value.startswith("_")):
                out.add(node.args[1].value)
    return out


def array_ops_hooks() -> set:
    from hyperclone_core.model.decoder import ArrayOps

    return {f"ArrayOps.{k}" for k, v in vars(ArrayOps).items() if inspect.isfunction(v) and not k.startswith("_")}


def surface() -> set:
    """The whole protocol surface as read from the code."""
    return protocol_members() | core_probes() | array_ops_hooks()


def flag_domains() -> dict:
    """Enumerated flags -> the values ``DecoderConfig``'s field comments list
    (``norm: str = "rms"  # rms | layer | layer_noparam``)."""
    from dataclasses import fields

    from hyperclone_core.model.spec import DecoderConfig

    out = {}
    for line in inspect.getsource(DecoderConfig).splitlines():
        m = re.match(r"\s+(\w+): (?:str|tuple) = .*#(.*\|.*)$", line)
        if m:
            comment = re.sub(r"\([^)]*\)", "", m.group(2))
            words = [re.findall(r"[a-z_]+", tok) for tok in comment.split("|")]
            out[m.group(1)] = {w[-1] for w in words if w}
    if "rope_type" in {f.name for f in fields(DecoderConfig)}:
        from hyperclone_core.model.rope import ROPE_TYPES  # its field comment names this table

        out["rope_type"] = set(ROPE_TYPES)
    return out


def engine_docs() -> str:
    from hyperclone_core.train import engine

    return " ".join(" ".join((c.__doc__ or "").split()) for c in (engine.Engine, engine.StepResult, engine.EngineState))


# ---------------------------------------------------------------- what a case exercises


def default_config():
    """``DecoderConfig`` with every flag at its default (the baseline "non-default" is read against)."""
    from hyperclone_core.model.spec import DecoderConfig

    return DecoderConfig("x", 1, 1, 1, 1, 1, 1, 1, 1)


def flag_items(value) -> tuple:
    """A flag's value as the items coverage counts: a tuple flag's items, a ``(name, value)``
    pair (``rope_scaling``) by its name, anything unhashable by its repr."""
    out = []
    for item in value if isinstance(value, tuple) else (value,):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            item = item[0]
        try:
            hash(item)
        except TypeError:
            item = repr(item)
        out.append(item)
    return tuple(out)


def same_value(a, b) -> bool:
    """Equal; numbers to 1e-12 relative (a value read through a formula, e.g. 2 ** -0.5)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or abs(a - b) <= 1e-12 * max(abs(a), abs(b))
    return a == b


def features(family, cfg) -> frozenset:
    """Every structural feature a case exercises, for choosing representative cases:

    - ``("flag", name, item)`` for each ``DecoderConfig`` flag off its default: the item
      itself when it is a string or a bool or a value ``FLAGS`` lists, and ``"set"`` for
      any number (one rope_theta or norm_eps stands for every other);
    - ``("dim", what)`` for the shapes of attention and MoE: ``mqa`` (one kv head),
      ``gqa``, ``head_dim`` (heads x head_dim != hidden), ``embed`` (an embedding
      narrower or wider than hidden), ``experts``, ``top1``;
    - ``("role", kind, axes, writer, noiseless, per_layer, per_expert)`` for each tensor
      of the family's role table this config has: the layouts the growth programs
      run on (fused segments, transposed Conv1D storage, per-expert tensors), names aside.
    """
    from dataclasses import fields

    default, out = default_config(), set()
    for f in fields(cfg):
        if f.name in DIMS:
            continue
        value = getattr(cfg, f.name)
        if same_value(value, getattr(default, f.name)):
            continue
        listed = FLAGS.get(f.name, ())
        for item in flag_items(value):
            if isinstance(item, (str, bool)) or any(same_value(item, v) for v in listed):
                out.add(("flag", f.name, item))
            if not isinstance(item, (str, bool)):
                out.add(("flag", f.name, "set"))
    if cfg.kv_heads == 1 and cfg.heads > 1:
        out.add(("dim", "mqa"))
    elif cfg.kv_heads < cfg.heads:
        out.add(("dim", "gqa"))
    if cfg.heads * cfg.head_dim != cfg.hidden:
        out.add(("dim", "head_dim"))
    if cfg.embed and cfg.embed != cfg.hidden:
        out.add(("dim", "embed"))
    if cfg.experts:
        out.add(("dim", "experts"))
        if cfg.experts_per_tok == 1:
            out.add(("dim", "top1"))
    for r in family.roles_for(cfg):
        out.add(("role", r.kind, tuple(str(a) for a in r.axes), bool(r.writer), bool(r.noiseless), r.per_layer,
                 r.per_expert))
    return frozenset(out)


def representative(always: dict, optional: dict) -> list:
    """The names of ``optional`` that, with every case of ``always``, exercise every
    feature (``features``) any case exercises: greedily, the case bringing the most
    features not yet covered first (ties by name), until none is left uncovered.
    Both arguments map a case name to ``(family, DecoderConfig)``."""
    covered = set().union(*(features(f, c) for f, c in always.values()))
    todo = {name: features(f, c) - covered for name, (f, c) in optional.items()}
    chosen = []
    while True:
        gain = {name: len(fs - covered) for name, fs in todo.items() if name not in chosen}
        best = min((n for n in gain if gain[n]), key=lambda n: (-gain[n], n), default=None)
        if best is None:
            return sorted(chosen)
        chosen.append(best)
        covered |= todo[best]


__all__ = ["DIMS", "ENGINE_RULES", "FLAGS", "HOOKS", "SENSITIVE", "array_ops_hooks", "core_probes", "engine_docs",
           "flag_domains", "protocol_members", "surface"]
