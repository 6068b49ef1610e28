"""The attack count of issue 9: several hundred hostile inputs, options and faults run
through ``hyperclone`` in-process, tallied as tracebacks / data loss / accepted
corruptions / hangs (all must be 0).

Each attack builds its own scene in a fresh folder, snapshots every file it must not
lose (the source, a pre-existing destination, a protected file or device), runs the
command, and is judged:

- traceback: an exception escaped ``main``, "Traceback" reached stderr, or the exit
  code says internal error (70);
- data loss: a protected file changed or vanished, a partial destination or a temp
  folder was left, or a pickle was executed;
- accepted corruption: a run that must fail exited 0;
- hang: no answer within the per-attack alarm (a FIFO opened by mistake, a runaway size);
- wrong class (reported, not fatal): failed with another exit code than expected.

    python benchmarks/attack_tally.py            # all attacks, the table, exit 1 if any count > 0
    python benchmarks/attack_tally.py --every 5  # a fifth of them
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import io as _io
import json
import os
import pickle
import shutil
import signal
import stat
import struct
import sys
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import numpy as np

from hyperclone_core import io
from hyperclone_core.model import testing
from hyperclone_core.cli import main
from hyperclone_core.console.boundary import TERMINATING

try:  # absent before issue 9: the script still runs there, to show what it finds
    from hyperclone_core.io import atomic
    from hyperclone_core.model.validate import _SCHEMA
except ImportError:  # pragma: no cover
    atomic = None
    _SCHEMA = {k: ("int", 1, 2**22) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                              "num_attention_heads", "num_key_value_heads", "vocab_size")}

ALARM_S = 60
SENTINEL = "PICKLE-EXECUTED"
RIVAL = "rival-snapshot.json"


class Attack(NamedTuple):
    category: str
    name: str
    scene: Callable  # (root) -> (argv, protected paths, Optional context manager factory)
    expect: Optional[int]  # the exit code it must end with; None: success or any clean failure


class _Hang(BaseException):
    pass


# ---------------------------------------------------------------- scenes


def _ckpt(root: Path, case="llama", shard=None, **cfg_changes) -> Path:
    cfg = dict(testing.CASES[case], **cfg_changes)
    w = testing.random_weights(testing.CASES[case])
    return io.save_checkpoint(root / "src", cfg, w, **({"max_shard_bytes": shard} if shard else {}))


def _set_config(src: Path, text: Optional[str] = None, **changes):
    if text is None:
        cfg = json.loads((src / "config.json").read_text())
        for k, v in changes.items():
            if v is _DROP:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        text = json.dumps(cfg)
    (src / "config.json").write_text(text)


_DROP = object()


def _header(path: Path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _put_header(path: Path, header: dict, blob: bytes, length_delta: int = 0):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) + length_delta) + raw + blob)


def expand_scene(*opts, case="llama", prepare=None, dst_prepare=None, ctx=None, shard=None):
    def scene(root: Path):
        src = _ckpt(root, case, shard=shard)
        if prepare:
            prepare(src, root)
        dst = root / "dst"
        if dst_prepare:
            dst_prepare(src, dst, root)
        return ["expand", str(src), str(dst), "--quiet", *opts], [src, root / "protected"], (ctx(src, dst, root)
                                                                                            if ctx else None)
    return scene


# ---------------------------------------------------------------- the attack list


def _bad_values(rule) -> list:
    kind = rule[0]
    if kind == "int":
        return [64.7, "32", True, -1, 2**40, [4], {}, float("nan"), 1e300] + ([0] if rule[1] >= 1 else [])
    if kind == "pos":
        return [-1.0, 0, "x", float("nan"), float("inf"), True, [1.0]]
    if kind == "num":  # a finite number in [lo, hi]
        lo, hi = rule[1], rule[2]
        return ["x", float("nan"), float("inf"), True, [1.0], lo - 1, hi * 2 + 1]
    if kind == "bool":
        return ["yes", 1, 0, [], "false"]
    if kind == "str":
        return [7, "", [], True]
    return ["x", 5, True]


def config_attacks() -> list:
    out = []
    for key, rule in _SCHEMA.items():
        for v in _bad_values(rule):
            out.append(Attack("config value", f"{key}={v!r}", expand_scene(
                prepare=lambda s, r, k=key, v=v: _set_config(s, **{k: v})), 3))
    whole = {"not an object": "[]", "a string": '"llama"', "null": "null", "invalid JSON": "{nope",
             "empty": "", "binary": "\udcff", "deep nesting": "[" * 100000 + "]" * 100000,
             "NaN literal size": '{"model_type": "llama", "hidden_size": NaN}'}
    for name, text in whole.items():
        out.append(Attack("config file", name, expand_scene(prepare=lambda s, r, t=text: (
            (s / "config.json").write_bytes(t.encode("utf-8", "surrogateescape")))), 3))
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                "model_type"):
        out.append(Attack("config file", f"missing {key}", expand_scene(
            prepare=lambda s, r, k=key: _set_config(s, **{k: _DROP})), 3))
    for name, ch in {"unsupported model_type": {"model_type": "bert"}, "kv not dividing": {"num_key_value_heads": 3},
                     "layer_types length": {"layer_types": ["full_attention"]},
                     "config/weights mismatch": {"intermediate_size": 40}, "huge config": None}.items():
        prep = (lambda s, r: (s / "config.json").write_text(" " * (17 * 2**20) + "{}")) if ch is None else \
            (lambda s, r, c=ch: _set_config(s, **c))
        out.append(Attack("config file", name, expand_scene(prepare=prep), 3))
    for case, key, v in (("gpt_neox", "rotary_pct", 2.0), ("gpt_neox", "use_parallel_residual", "no"),
                         ("opt", "ffn_dim", 48.5), ("olmo", "clip_qkv", None),
                         ("gemma2", "final_logit_softcapping", -30.0), ("mixtral", "num_experts_per_tok", 9),
                         ("olmo", "clip_qkv", float("inf")), ("phi3", "partial_rotary_factor", 0)):
        expect = 0 if v is None else 3
        out.append(Attack("config value", f"{case}: {key}={v!r}", expand_scene(
            case=case, prepare=lambda s, r, k=key, v=v: _set_config(s, **{k: v})), expect))
    return out


def _edit_header(edit):
    def prepare(src, root):
        f = src / "model.safetensors"
        header, blob = _header(f)
        names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
        res = edit(header, blob, names)
        _put_header(f, *(res if isinstance(res, tuple) else (header, blob)))
    return prepare


def _shift(h, names, i, d):
    a, b = h[names[i]]["data_offsets"]
    h[names[i]]["data_offsets"] = [a + d, b + d]


def _fifo(name):
    def prepare(src, root):
        (src / name).unlink(missing_ok=True)
        os.mkfifo(src / name)
    return prepare


def _outside_index(target_fn):
    def prepare(src, root):
        (root / "secret.txt").write_text("TOP SECRET " * 20)
        doc = json.loads((src / io.INDEX).read_text())
        first = next(iter(doc["weight_map"]))
        doc["weight_map"][first] = target_fn(root)
        (src / io.INDEX).write_text(json.dumps(doc))
    return prepare


def _pickle(src, root):
    class Evil:
        def __reduce__(self):
            return (open, (str(root / SENTINEL), "w"))
    (src / "model.safetensors").unlink()
    (src / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))


def _two_shards(src, root):
    shards = sorted(set(json.loads((src / io.INDEX).read_text())["weight_map"].values()))
    (src / io.INDEX).unlink()
    a, b = io.SafetensorsFile(src / shards[0]), io.SafetensorsFile(src / shards[1])
    t = {a.keys()[0]: np.asarray(a.raw(a.keys()[0]))}
    t.update({k: np.asarray(b.raw(k)) for k in b.keys()})
    io.write_safetensors(src / shards[1], t)


def _poison(value):
    def prepare(src, root):
        cfg, w = io.load_weights(src)
        k = sorted(w)[3]
        w[k] = w[k].copy()
        w[k].flat[5] = value
        shutil.rmtree(src)
        io.save_checkpoint(src, cfg, w)
    return prepare


def source_attacks() -> list:
    edits = {
        "negative offsets": lambda h, b, n: _shift(h, n, 0, -8),
        "overlap": lambda h, b, n: _shift(h, n, 1, -4),
        "gap": lambda h, b, n: _shift(h, n, len(n) - 1, 4),
        "trailing bytes": lambda h, b, n: (h, b + b"\0" * 16),
        "norm stored as I32": lambda h, b, n: h["model.norm.weight"].update(dtype="I32"),
        "unknown dtype": lambda h, b, n: h[n[0]].update(dtype="F8_E4M3"),
        "float shape": lambda h, b, n: h[n[0]].update(shape=[4.5, 2]),
        "bool offsets": lambda h, b, n: h[n[0]].update(data_offsets=[False, True]),
        "three offsets": lambda h, b, n: h[n[0]].update(data_offsets=[0, 4, 8]),
        "huge shape": lambda h, b, n: h[n[0]].update(shape=[2**62, 2**62]),
        "rank 40": lambda h, b, n: h[n[0]].update(shape=[1] * 40),
        "metadata not strings": lambda h, b, n: h.update(__metadata__={"format": 7}),
        "entry not an object": lambda h, b, n: h.update({n[0]: [1, 2]}),
        "empty tensor name": lambda h, b, n: h.update({"": h.pop(n[0])}),
        "missing dtype": lambda h, b, n: h[n[0]].pop("dtype"),
        "same offsets twice": lambda h, b, n: h[n[1]].update(data_offsets=h[n[0]]["data_offsets"]),
        "length +1": lambda h, b, n: (h, b[1:]),
        "truncated data": lambda h, b, n: (h, b[: len(b) // 2]),
    }
    out = [Attack("safetensors", k, expand_scene(prepare=_edit_header(e)), 3) for k, e in edits.items()]
    raw = {"no header": b"", "7 bytes": b"\1" * 7, "length past file": struct.pack("<Q", 10**6) + b"{}",
           "length 2**64-1": b"\xff" * 8 + b"{}", "not JSON": struct.pack("<Q", 4) + b"nope",
           "not UTF-8": struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc", "JSON list": struct.pack("<Q", 2) + b"[]",
           "duplicate key": struct.pack("<Q", 17) + b'{"a": 1, "a": 2}'}
    for k, data in raw.items():
        out.append(Attack("safetensors", k, expand_scene(
            prepare=lambda s, r, d=data: (s / "model.safetensors").write_bytes(d)), 3))
    files = {
        "FIFO model.safetensors": _fifo("model.safetensors"), "FIFO config.json": _fifo("config.json"),
        "FIFO tokenizer.json": _fifo("tokenizer.json"), "FIFO index": _fifo(io.INDEX),
        "folder as config.json": lambda s, r: ((s / "config.json").unlink(), (s / "config.json").mkdir()),
        "folder as shard": lambda s, r: ((s / "model.safetensors").unlink(), (s / "model.safetensors").mkdir()),
        "tokenizer symlink outside": lambda s, r: ((r / "secret").write_text("x"),
                                                   (s / "tokenizer.json").symlink_to(r / "secret")),
        "config symlink outside": lambda s, r: (os.replace(s / "config.json", r / "c.json"),
                                                (s / "config.json").symlink_to(r / "c.json")),
        "shard symlink outside": lambda s, r: (os.replace(s / "model.safetensors", r / "m"),
                                               (s / "model.safetensors").symlink_to(r / "m")),
        "dangling shard symlink": lambda s, r: ((s / "model.safetensors").unlink(),
                                                (s / "model.safetensors").symlink_to(s / "gone")),
        "pickle only": _pickle, "NaN weight": _poison(np.nan), "Inf weight": _poison(np.inf),
        "no weights": lambda s, r: (s / "model.safetensors").unlink(),
    }
    out += [Attack("source files", k, expand_scene(prepare=p), 3) for k, p in files.items()]
    shard = {"index ../outside": _outside_index(lambda r: "../secret.txt"),
             "index absolute": _outside_index(lambda r: str(r / "secret.txt")),
             "index /etc/passwd": _outside_index(lambda r: "/etc/passwd"),
             "index names a missing shard": _outside_index(lambda r: "model-99.safetensors"),
             "index not JSON": lambda s, r: (s / io.INDEX).write_text("{"),
             "index without weight_map": lambda s, r: (s / io.INDEX).write_text("{}"),
             "index weight_map list": lambda s, r: (s / io.INDEX).write_text('{"weight_map": []}'),
             "index value not a string": _outside_index(lambda r: 5),
             "tensor in two shards": _two_shards}
    out += [Attack("source files", k, expand_scene(prepare=p, shard=20_000), 3) for k, p in shard.items()]
    return out


OPTION_BAD = [["--width", v] for v in ("nan", "inf", "-inf", "-2", "0", "1e9", "two", "", "1e400")] + \
    [["--ffn", v] for v in ("0", "nan", "-1", "1e5")] + [["--heads", v] for v in ("-1", "inf", "x")] + \
    [["--kv-heads", v] for v in ("0", "nan")] + [["--ffn-size", v] for v in ("0", "64.5", "-3", "99999999999", "x")] + \
    [["--layers", v] for v in ("100000000", "0", "-1", "+-3", "2.5", "+", "x", "+100000000", "1")] + \
    [["--seed", v] for v in ("-1", "1.5", str(2**64), "x")] + [["--tolerance", v] for v in ("nan", "-1", "inf", "x")] + \
    [["--dtype", "int8"], ["--layout", "spiral"], ["--backend", "nope"], ["--backend", ""], ["--bogus"],
     ["--width", "1.5"], ["--width", "0.5"], ["--ffn", "0.5"], ["--strategy", "diagonal", "--ffn", "3"],
     ["--ffn", "2", "--ffn-size", "96"], ["--device", "cuda", "--backend", "torch"], ["--device", "tpu:9"]]
STRATEGY_BAD = ["noisy:-60", "noisy:", "noisy:nan", "noisy:inf", "noisy:-inf", "noisy:1e400", "noisy:-0.1", "noisy:0",
                "noisy:201", "diagonal+noise:", "symmetric:3", "noisy:10+noise:3", "mlp=", "=symmetric", ",,",
                "mpl=symmetric", "mlp=noisy:-3", "*=symmetric,*=diagonal", "random_split:0", "random_split:nan",
                "random_split:-1", "random_split:", "bogus", "symmetric+diagonal", "  ", "noise:10",
                "q_proj=symmetric", "*.nothing.*=symmetric"]
STRATEGY_OK = ["symmetric", "diagonal", "first_copy", "random_split:0.5", "noisy:0.5", "noisy:10",
               "diagonal+noise:5", "mlp=noisy:10,attn=symmetric", "*.q_proj.*=symmetric,*=noisy:20"]


def option_attacks() -> list:
    out = [Attack("options", " ".join(o) or "''", expand_scene(*o), 2) for o in OPTION_BAD]
    out += [Attack("strategy", s, expand_scene("--strategy", s), 2) for s in STRATEGY_BAD]
    out += [Attack("strategy (valid)", s, expand_scene("--strategy", s), 0) for s in STRATEGY_OK]
    out += [Attack("options (valid)", " ".join(o), expand_scene(*o), 0) for o in (
        ["--width", "3"], ["--ffn", "1.5"], ["--layers", "+2"], ["--layers", "4"], ["--dtype", "bfloat16"],
        ["--layout", "interleave"], ["--seed", str(2**63 - 1)], ["--no-verify"], ["--kv-heads", "1", "--heads", "2"])]
    return out


# ---------------------------------------------------------------- destinations, faults, verification


def _mknod(dst):
    try:
        os.mknod(dst, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except OSError:
        dst.write_text("stand-in for a device")


def _our_output(src, dst, root):
    main(["expand", str(src), str(dst), "--quiet"])


def _rival(action):
    """A context that runs ``action(src, dst, root)`` after the last tensor is written."""
    def ctx(src, dst, root):
        @contextlib.contextmanager
        def cm():
            original, done = io.ShardedWriter.close, []

            def close(self):
                original(self)
                if not done:
                    done.append(1)
                    with contextlib.redirect_stdout(_io.StringIO()):
                        action(src, dst, root)
                    (root / RIVAL).write_text(json.dumps(_snapshot([dst])))  # what the rival owns now
            io.ShardedWriter.close = close
            try:
                yield
            finally:
                io.ShardedWriter.close = original
        return cm()
    return ctx


def _lock_mode(ctx=None):
    def outer(src, dst, root):
        @contextlib.contextmanager
        def cm():
            if atomic is None:  # pragma: no cover - before issue 9 there was one mode
                with (ctx(src, dst, root) if ctx else contextlib.nullcontext()):
                    yield
                return
            saved, atomic._renameat2 = atomic._renameat2, None
            try:
                with (ctx(src, dst, root) if ctx else contextlib.nullcontext()):
                    yield
            finally:
                atomic._renameat2 = saved
        return cm()
    return outer


def destination_attacks() -> list:
    def make(name, opts, dst_prepare=None, ctx=None, expect=4):
        def scene(root):
            src = _ckpt(root)
            dst = root / "dst"
            target = {"src": src, "parent of src": root, "inside src": src / "wide"}.get(name.split(": ")[-1], dst)
            if dst_prepare:
                dst_prepare(src, dst, root)
            keep = [src, root / "protected"] + ([] if expect == 0 or ctx else [dst])  # a rival owns dst
            return (["expand", str(src), str(target), "--quiet", *opts], keep, ctx(src, dst, root) if ctx else None)
        return scene

    foreign = lambda s, d, r: (d.mkdir(), (d / "thesis.tex").write_text("years"))  # noqa: E731
    cases = [
        ("DST: src", [], None, None, 4), ("DST: src", ["--force"], None, None, 4),
        ("DST: parent of src", ["--force"], None, None, 4), ("DST: inside src", [], None, None, 4),
        ("DST symlink to src", ["--force"], lambda s, d, r: d.symlink_to(s), None, 4),
        ("DST a file", ["--force"], lambda s, d, r: d.write_text("precious"), None, 4),
        ("DST a FIFO", ["--force"], lambda s, d, r: os.mkfifo(d), None, 4),
        ("DST a device", ["--force"], lambda s, d, r: _mknod(d), None, 4),
        ("DST a foreign folder", [], foreign, None, 4), ("DST a foreign folder", ["--force"], foreign, None, 4),
        ("DST our output, no --force", [], _our_output, None, 4),
        ("DST our output --force", ["--force"], _our_output, None, 0),
        ("DST empty folder --force", ["--force"], lambda s, d, r: d.mkdir(), None, 0),
        ("DST parent is a file", [], lambda s, d, r: None, None, 4),
        ("DST created meanwhile", [], None, _rival(lambda s, d, r: foreign(s, d, r)), 4),
        ("DST created meanwhile --force", ["--force"], None, _rival(lambda s, d, r: foreign(s, d, r)), 4),
        ("rival run to the same DST", [], None, _rival(lambda s, d, r: _our_output(s, d, r)), 4),
        ("DST swapped meanwhile --force", ["--force"], _our_output,
         _rival(lambda s, d, r: (os.rename(d, r / "moved"), foreign(s, d, r))), 4),
    ]
    out = []
    for mode in ("renameat2", "lock file"):
        for name, opts, prep, ctx, expect in cases:
            c = _lock_mode(ctx) if mode == "lock file" else ctx
            scene = make(name, opts, prep, c, expect)
            if name == "DST parent is a file":
                def scene(root, opts=opts, c=c):
                    src = _ckpt(root)
                    (root / "protected").write_text("a file")
                    return (["expand", str(src), str(root / "protected" / "dst"), "--quiet", *opts],
                            [src, root / "protected"], c(src, root / "dst", root) if c else None)
            out.append(Attack(f"destination ({mode})", name + (" " + " ".join(opts) if opts else ""), scene, expect))
    return out


def _fault(exc_fn, at):
    def ctx(src, dst, root):
        @contextlib.contextmanager
        def cm():
            original, count = io.ShardedWriter.write_rows, [0]

            def write(self, name, arr, raw=False):
                count[0] += 1
                if count[0] == at:
                    raise exc_fn(self)
                original(self, name, arr, raw)
            io.ShardedWriter.write_rows = write
            try:
                yield
            finally:
                io.ShardedWriter.write_rows = original
        return cm()
    return ctx


CLEANUPS: list = []


def _real_disk_full(root: Path):
    """A destination on a tmpfs just big enough for the shards (root only): the run passes
    the free-space check and meets a real ENOSPC writing the small files after them."""
    src = _ckpt(root)
    with contextlib.redirect_stdout(_io.StringIO()):
        main(["expand", str(src), str(root / "probe"), "--quiet", "--no-verify"])
    shards = sum(-(-p.stat().st_size // 4096) * 4096 for p in (root / "probe").glob("*.safetensors"))
    small = root / "small"
    small.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size={shards + 4096} tmpfs {small} 2>/dev/null"):
        ctx = _fault(lambda w: OSError(errno.ENOSPC, "No space left on device"), 3)(src, small / "dst", root)
    else:
        ctx = None
        CLEANUPS.append(lambda: os.system(f"umount {small} 2>/dev/null"))
    return ["expand", str(src), str(small / "dst"), "--quiet"], [src], ctx


def fault_attacks() -> list:
    kinds = {
        "disk full": (lambda w: OSError(errno.ENOSPC, "No space left on device"), 4),
        "quota": (lambda w: OSError(errno.EDQUOT, "Disk quota exceeded"), 4),
        "read-only fs": (lambda w: OSError(errno.EROFS, "Read-only file system"), 4),
        "EACCES writing": (lambda w: PermissionError(errno.EACCES, "Permission denied", str(w.folder / "x")), 4),
        "EIO writing": (lambda w: OSError(errno.EIO, "Input/output error", str(w.folder / "x")), 4),
        "Ctrl-C": (lambda w: KeyboardInterrupt(), 130),
        "out of memory": (lambda w: MemoryError(), 3),
    }
    out = [Attack("faults", "real disk full (tmpfs)", _real_disk_full, 4)]
    for name, (fn, expect) in kinds.items():
        for at in (1, 5, 18):
            out.append(Attack("faults", f"{name} at tensor {at}", expand_scene(ctx=_fault(fn, at)), expect))
    return out


def _corrupt(factor, name=None, case="llama"):
    def scene(root):
        src = _ckpt(root, case)
        main(["expand", str(src), str(root / "clone"), "--quiet", "--strategy", "symmetric"])
        cfg, w = io.load_weights(root / "clone")
        k = name or "model.layers.1.mlp.down_proj.weight"
        w[k] = w[k] * np.float32(factor)
        io.save_checkpoint(root / "bad", cfg, w)
        return ["verify", str(src), str(root / "bad")], [src], None
    return scene


def verification_attacks() -> list:
    out = []
    for f in (1.02, 1.15, 3.0, -1.0, 0.0, 1e4, 3e30):
        out.append(Attack("verification", f"a tensor scaled by {f:g}", _corrupt(f), 5))
    for case in sorted(testing.CASES):
        def faithful(root, case=case):
            src = _ckpt(root, case)
            main(["expand", str(src), str(root / "clone"), "--quiet", "--no-verify"])
            return ["verify", str(src), str(root / "clone"), "--json"], [src], None
        out.append(Attack("verification (faithful)", case, faithful, 0))
        out.append(Attack("verification", f"{case}: embedding scaled by 1.5",
                          _corrupt(1.5, next(iter(testing.random_weights(testing.CASES[case]))), case), 5))
    return out


def all_attacks() -> list:
    return config_attacks() + source_attacks() + option_attacks() + destination_attacks() + fault_attacks() + \
        verification_attacks()


# ---------------------------------------------------------------- train, demo, resume, jax/mlx (processes)
#
# Issue 25: each attack runs `python -m hyperclone_core.cli ...` as a real process, so
# concurrency, FIFOs, symlinks, aliasing, signals and a file truncated under a running
# job are what a user meets.  A scene returns (argv, protected paths, during): `during`
# (optional) runs beside the process -- a rival run, a truncation, a signal -- and may
# return the rival's exit code (then both succeeding on one OUT is an accepted corruption).


class PAttack(NamedTuple):
    category: str
    name: str
    scene: Callable  # (root) -> (argv, protected, during or None)
    expect: Optional[int]


PROCESS_ALARM_S = 240
TRAIN = ("--steps", "2", "--batch-size", "2", "--seq-len", "8", "--no-progress", "--threads", "1")
DEMO = ("--hidden", "8", "--layers", "1", "--heads", "2", "--ffn", "16", "--steps", "4", "--eval-every", "1",
        "--eval-batches", "1", "--batch-size", "2", "--seq-len", "8", "--warmup-steps", "1",
        "--no-progress", "--threads", "1")


def _base(root: Path) -> Path:
    save = io.save_checkpoint(root / "m", testing.CASES["llama"], testing.random_weights(testing.CASES["llama"]))
    np.save(root / "d.npy", (np.arange(6000) % 90).astype(np.uint16))
    (np.arange(6000) % 90).astype(np.uint16).tofile(root / "d.bin")
    words = "the cat sat on a mat and the dog ran far away from home".split()
    rng = np.random.default_rng(0)
    (root / "t.txt").write_text("\n\n".join(" ".join(rng.choice(words, 60)) for _ in range(80)))
    return save


def _train(root: Path, out="o", *extra, backend="torch", model="m", data="d.npy") -> list:
    return ["train", str(root / model), "--data", str(root / data), "--out", str(root / out), "--backend", backend,
            *TRAIN, *extra]


def _demo(root: Path, out="demo", *extra, backend="torch") -> list:
    return ["demo", "--text", str(root / "t.txt"), "--out", str(root / out), "--backend", backend, *DEMO, *extra]


def _quiet(argv) -> int:
    with contextlib.redirect_stdout(_io.StringIO()), contextlib.redirect_stderr(_io.StringIO()):
        return main(argv)


def _previous_run(root: Path, out="o", backend="torch") -> Path:
    assert _quiet(_train(root, out, backend=backend)) == 0, "the scene's first run failed"
    return root / out


def t_scene(*extra, prepare=None, protect=("m", "d.npy", "d.bin", "t.txt"), backend="torch", out="o",
            during=None, argv=None):
    def scene(root: Path):
        _base(root)
        more = prepare(root) if prepare else None
        args = argv(root) if argv else _train(root, out, *extra, backend=backend)
        keep = [root / p for p in protect] + (list(more) if isinstance(more, list) else [])
        return args, keep, (lambda proc, r=root: during(proc, r)) if during else None
    return scene


def _fifo_at(rel):
    def prepare(root):
        p = root / rel
        if os.path.lexists(p):
            os.unlink(p)
        os.mkfifo(p)
    return prepare


def _foreign(name):
    def prepare(root):
        (root / "o").mkdir()
        (root / "o" / name).write_text("the user's own " + name)
        return [root / "o"]
    return prepare


def _moments(edit, backend="torch"):
    def prepare(root):
        out = _previous_run(root, backend=backend)
        path = out / "checkpoint-0000002" / "trainer" / "optimizer.safetensors"
        f = io.SafetensorsFile(path)
        t = {k: np.asarray(f.raw(k)) for k in f.keys()}
        edit(t, "exp_avg/model.layers.0.mlp.down_proj.weight")
        io.write_safetensors(path, t)
        return [out]
    return prepare


def _state(edit, backend="torch"):
    def prepare(root):
        out = _previous_run(root, backend=backend)
        path = out / "checkpoint-0000002" / "trainer" / "state.json"
        edit(path)
        return [out]
    return prepare


def _set_json(key, value):
    def edit(path):
        doc = json.loads(path.read_text())
        doc[key] = value
        path.write_text(json.dumps(doc))
    return edit


def _fifo_file(path):
    path.unlink()
    os.mkfifo(path)


def _tokenizer(root, garbage=False):
    if garbage:
        (root / "m" / "tokenizer.json").write_text("{ not a tokenizer")
        return
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[UNK]", *sorted(set((root / "t.txt").read_text().split()))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(root / "m" / "tokenizer.json"))


def _no_tokenizers(root):
    (root / "shim").mkdir()
    (root / "shim" / "tokenizers.py").write_text("raise ImportError('tokenizers is not installed (shim)')\n")
    _tokenizer(root)


def _single_beside_index(root):
    shutil.rmtree(root / "m")
    cfg, w = testing.CASES["llama"], testing.random_weights(testing.CASES["llama"])
    io.save_checkpoint(root / "m", cfg, w, max_shard_bytes=20_000)
    io.write_safetensors(root / "m" / "model.safetensors",
                         {k: np.asarray(v) for k, v in testing.random_weights(cfg, seed=9).items()})


def _rival_run(argv_fn, wait_for=None):
    """Start a rival run of ``argv_fn(root)`` at once (or when ``wait_for(root)`` exists);
    returns its exit code."""
    def during(proc, root):
        import time

        if wait_for is not None:
            deadline = time.time() + 60
            while time.time() < deadline and not os.path.lexists(wait_for(root)) and proc.poll() is None:
                time.sleep(0.02)
        return _spawn(argv_fn(root), root).wait(timeout=PROCESS_ALARM_S)
    return during


def _spawn(argv, root: Path, **kw):
    import subprocess

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONFAULTHANDLER="1")
    if (root / "shim").is_dir():
        env["PYTHONPATH"] = os.pathsep.join([str(root / "shim"), env.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, "-m", "hyperclone_core.cli", *argv], env=env, cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_default_signals, **kw)


def _default_signals() -> None:
    """The child starts with the termination signals at their defaults, as a command typed at a
    terminal does: a tally run under nohup (SIGHUP ignored) or as a background job of a
    non-interactive shell (SIGINT ignored) would pass those on, and the CLI rightly leaves an
    ignored signal alone, so the signal attacks would read as hangs."""
    for sig in (signal.SIGINT, *TERMINATING):  # the signals the CLI turns into a clean exit 130
        signal.signal(sig, signal.SIG_DFL)


def _long(root, out="o", backend="torch"):
    argv = _train(root, out, "--save-every", "1", "--eval-every", "0", backend=backend)
    argv[argv.index("--steps") + 1] = "100000"
    return argv


def _metrics_ok(root):
    """After two runs raced on one OUT: its metrics hold each step once."""
    path = root / "o" / "metrics.jsonl"
    if not path.is_file():
        return True
    try:
        steps = [json.loads(x).get("step") for x in path.read_text().splitlines() if x.strip()]
    except (ValueError, AttributeError, OSError):
        return True  # not a run's metrics (a foreign folder the attack protects on its own)
    return len(steps) == len(set(steps))


def _linked_run(root):
    _previous_run(root, "real")
    (root / "o").symlink_to(root / "real")
    return [root / "real"]


def _when(ready, action, limit=120):
    """Run ``action(proc, root)`` once ``ready(root)`` holds (the job is really running)."""
    def during(proc, root):
        import time

        deadline = time.time() + limit
        while time.time() < deadline and proc.poll() is None and not ready(root):
            time.sleep(0.02)
        if proc.poll() is None:
            action(proc, root)
    return during


def _killed_run(root, delay):
    """A long run killed with SIGKILL (no cleanup of its own) soon after its 2nd checkpoint."""
    import time

    proc = _spawn(_long(root), root)
    _when(_checkpointed, lambda p, r: (time.sleep(delay), p.kill()))(proc, root)
    proc.kill()
    proc.wait()


def _checkpointed(root):
    return os.path.isdir(root / "o" / "checkpoint-0000002")


def _expanding(root):
    return any(io.TMP_MARK in p.name for p in root.iterdir())


def process_attacks() -> list:
    out: list = []
    add = lambda cat, name, scene, expect: out.append(PAttack(cat, name, scene, expect))  # noqa: E731
    # ---- train: where it writes
    for name, target in (("the training data", "d.npy"), ("the model's config.json", "m/config.json"),
                         ("the model's weights", "m/model.safetensors")):
        add("train output", f"--log-jsonl is {name}", t_scene(argv=lambda r, t=target: _train(
            r, "o", "--log-jsonl", str(r / t))), 4)
    add("train output", "--log-jsonl is the text data", t_scene(argv=lambda r: _train(
        r, "o", "--log-jsonl", str(r / "t.txt"), "--tokenizer", "bytes", data="t.txt")), 4)
    add("train output", "--log-jsonl is the validation data", t_scene(argv=lambda r: _train(
        r, "o", "--val-data", str(r / "d.bin"), "--data-dtype", "uint16", "--log-jsonl", str(r / "d.bin"))), 4)
    add("train output", "--log-jsonl a hard link to the data",
        t_scene(prepare=lambda r: os.link(r / "d.npy", r / "h.jsonl"), argv=lambda r: _train(r, "o", "--log-jsonl",
                                                                                              str(r / "h.jsonl"))), 4)
    add("train output", "--log-jsonl a FIFO", t_scene(prepare=_fifo_at("f.jsonl"),
                                                      argv=lambda r: _train(r, "o", "--log-jsonl", str(r / "f.jsonl"))), 4)
    add("train output", "--log-jsonl the --plan file",
        t_scene(prepare=lambda r: (r / "p.json").write_text("{}"),
                argv=lambda r: _train(r, "o", "--plan", str(r / "p.json"), "--log-jsonl", str(r / "p.json")),
                protect=("m", "d.npy", "p.json")), 4)
    add("train output", "OUT/metrics.jsonl a symlink outside (resume)",
        t_scene(prepare=lambda r: (_previous_run(r), (r / "outside").write_text("secret"),
                                   (r / "o" / "metrics.jsonl").unlink(),
                                   (r / "o" / "metrics.jsonl").symlink_to(r / "outside"))[-1] or [r / "outside"],
                argv=lambda r: _train(r, "o", "--resume", "--steps", "3")), 0)
    add("train output", "OUT/metrics.jsonl a FIFO (resume)",
        t_scene(prepare=lambda r: (_previous_run(r), _fifo_at("o/metrics.jsonl")(r)) and None,
                argv=lambda r: _train(r, "o", "--resume", "--steps", "3")), 0)
    for name in ("metrics.jsonl", "recipe.toml", "loss.png"):
        add("train output", f"--out a foreign folder holding {name}", t_scene(prepare=_foreign(name)), 4)
    add("train output", "--out the model folder", t_scene(argv=lambda r: _train(r, "m")), 4)
    add("train output", "--out inside the model folder", t_scene(argv=lambda r: _train(r, "m/run")), 4)
    add("train output", "--out a file", t_scene(argv=lambda r: _train(r, "t.txt")), 4)
    add("train output", "--out a symlink to a previous run", t_scene(prepare=_linked_run), 4)
    add("train output", "--out a demo's output",
        t_scene(prepare=lambda r: (_quiet(_demo(r, "o")), [r / "o"])[1]), 4)
    add("train output", "--out non-UTF-8 bytes", t_scene(argv=lambda r: _train(r, "x\udcff/o")), 0)
    # ---- train: concurrency on one OUT
    add("train concurrency", "two fresh runs at once", t_scene(argv=lambda r: _train(r, "o", "--steps", "40"),
                                                               during=_rival_run(lambda r: _train(r, "o", "--steps", "40"),
                                                                             wait_for=lambda r: r / "o")), 4)
    add("train concurrency", "two resumes at once",
        t_scene(prepare=lambda r: _previous_run(r) and None, argv=lambda r: _train(r, "o", "--resume", "--steps", "40"),
                during=_rival_run(lambda r: _train(r, "o", "--resume", "--steps", "40"))), 4)
    # ---- train: what it reads
    for name, rel, argv in (("--plan", "p.json", lambda r: _train(r, "o", "--plan", str(r / "p.json"))),
                            ("--data .npy", "f.npy", lambda r: _train(r, "o", data="f.npy")),
                            ("--data .bin", "f.bin", lambda r: _train(r, "o", "--data-dtype", "uint16", data="f.bin")),
                            ("--data text", "f.txt", lambda r: _train(r, "o", data="f.txt")),
                            ("--val-data", "v.npy", lambda r: _train(r, "o", "--val-data", str(r / "v.npy"))),
                            ("--tokenizer", "tok.json", lambda r: _train(r, "o", "--tokenizer", str(r / "tok.json"))),
                            ("the model's tokenizer.json", "m/tokenizer.json", None)):
        add("train input", f"FIFO as {name}", t_scene(prepare=_fifo_at(rel), argv=argv, protect=("d.npy",)), 3)
    add("train input", "garbage --plan", t_scene(prepare=lambda r: (r / "p.json").write_text("nope"),
                                                 argv=lambda r: _train(r, "o", "--plan", str(r / "p.json"))), 3)
    add("train input", "a plan of the wrong format", t_scene(prepare=lambda r: (r / "p.json").write_text('{"a": 1}'),
                                                             argv=lambda r: _train(r, "o", "--plan", str(r / "p.json"))), 3)
    add("train input", "garbage tokenizer.json", t_scene(prepare=lambda r: _tokenizer(r, garbage=True),
                                                         argv=lambda r: _train(r, "o", data="t.txt")), 3)
    add("train input", "tokenizer.json but no `tokenizers`", t_scene(prepare=_no_tokenizers,
                                                                     argv=lambda r: _train(r, "o", data="t.txt")), 3)
    add("train input", ".npy truncated", t_scene(prepare=lambda r: (r / "c.npy").write_bytes((r / "d.npy").read_bytes()[:999]),
                                                 argv=lambda r: _train(r, "o", data="c.npy")), 3)
    add("train input", ".npy of floats", t_scene(prepare=lambda r: np.save(r / "c.npy", np.ones(900, np.float32)),
                                                 argv=lambda r: _train(r, "o", data="c.npy")), 3)
    add("train input", ".bin odd size", t_scene(prepare=lambda r: (r / "c.bin").write_bytes(b"\0" * 999),
                                                argv=lambda r: _train(r, "o", "--data-dtype", "uint16", data="c.bin")), 3)
    add("train input", "model.safetensors beside an index naming other shards",
        t_scene(prepare=_single_beside_index, protect=("d.npy",)), 3)
    add("train input", "data truncated under the running job (.npy)",
        t_scene(argv=lambda r: _long(r), protect=("m",), during=_when(
            _checkpointed, lambda p, r: os.truncate(r / "d.npy", 200))), 3)
    add("train input", "data truncated under the running job (.bin)",
        t_scene(argv=lambda r: [*_long(r)[:3], str(r / "d.bin"), *_long(r)[4:], "--data-dtype", "uint16"],
                protect=("m",), during=_when(_checkpointed, lambda p, r: os.truncate(r / "d.bin", 64))), 3)
    add("train input", "non-UTF-8 bytes in the data path",
        t_scene(prepare=lambda r: shutil.copy(r / "d.npy", os.fsencode(str(r)) + b"/\xfe.npy"),
                argv=lambda r: _train(r, "o", data=os.fsdecode(b"\xfe.npy"))), 0)
    # ---- train: options
    for opts in (["--val-fraction", "nan"], ["--val-fraction", "-0.1"], ["--val-fraction", "1"], ["--lr", "-1"],
                 ["--lr", "nan"], ["--batch-size", "0"], ["--batch-size", "9000000"], ["--seq-len", "0"],
                 ["--grad-accum", "3"], ["--data-dtype", "float32"], ["--mesh", "data=2"], ["--parallel", "mesh"],
                 ["--parallel", "bogus"], ["--device", "cuda"], ["--device", "tpu:3"], ["--clone-lr", "inverse_width"],
                 ["--config", "a.toml", "--config", "b.toml"], ["--allow-change", "nonsense"]):
        add("train options", " ".join(opts), t_scene(*opts), 2)
    add("train options", "one option twice in a recipe (two spellings)",
        t_scene(prepare=lambda r: (r / "r.toml").write_text('batch_size = 2\n"batch-size" = 4\n'),
                argv=lambda r: _train(r, "o", "--config", str(r / "r.toml"))), 2)
    for backend, opts in (("jax", ["--parallel", "ddp"]), ("jax", ["--device", "gpu"]), ("mlx", ["--device", "cpu:7"]),
                          ("mlx", ["--parallel", "fsdp"]), ("mlx", ["--mesh", "data=2"]), ("jax", ["--val-fraction", "nan"])):
        add(f"{backend} route", "train " + " ".join(opts), t_scene(*opts, backend=backend), 2)
    # ---- resume
    edits = {"a moment transposed": lambda t, k: t.__setitem__(k, t[k].T.copy()),
             "a moment float16": lambda t, k: t.__setitem__(k, t[k].astype(np.float16)),
             "a moment larger": lambda t, k: t.__setitem__(k, np.zeros((t[k].shape[0] + 1, t[k].shape[1]), np.float32)),
             "a moment flattened": lambda t, k: t.__setitem__(k, t[k].reshape(-1)),
             "a moment missing": lambda t, k: t.pop(k)}
    for backend in ("torch", "jax", "mlx"):
        for name, edit in edits.items() if backend == "torch" else list(edits.items())[:2]:
            add(f"resume ({backend})", name, t_scene(prepare=_moments(edit, backend), backend=backend,
                                                     argv=lambda r, b=backend: _train(r, "o", "--resume", "--steps", "4",
                                                                                      backend=b)), 3)
        add(f"resume ({backend})", "state.json a FIFO", t_scene(prepare=_state(_fifo_file, backend), backend=backend,
                                                                argv=lambda r, b=backend: _train(r, "o", "--resume", "--steps",
                                                                                                 "4", backend=b)), 3)
    for name, edit in (("step a string", _set_json("step", "2")), ("history a dict", _set_json("history", {})),
                       ("adam_step negative", _set_json("adam_step", -1)), ("garbage", lambda p: p.write_text("{")),
                       ("val_loss a string", _set_json("val_loss", "low")),
                       ("model.shapes a list", _set_json("model", {"shapes": []}))):
        add("resume (torch)", f"state.json {name}", t_scene(prepare=_state(edit),
                                                            argv=lambda r: _train(r, "o", "--resume", "--steps", "4")), 3)
    # ---- signals and kills
    for sig in ("SIGTERM", "SIGHUP", "SIGINT"):
        add("signals", f"{sig} during train (checkpoints every step)",
            t_scene(argv=lambda r: _long(r), protect=("m", "d.npy"),
                    during=_when(_checkpointed, lambda p, r, s=sig: p.send_signal(getattr(signal, s)))), 130)
    for delay in (0.0, 0.13, 0.37):
        add("signals", f"SIGKILL mid-run (+{delay}s), then a resume cleans up",
            t_scene(prepare=lambda r, d=delay: _killed_run(r, d), protect=("m", "d.npy"),
                    argv=lambda r: _train(r, "o", "--resume", "--steps", "1")), 2)
    add("signals", "SIGTERM during expand", t_scene(argv=lambda r: ["expand", str(r / "m"), str(r / "wide"), "--quiet"],
                                                    during=_when(_expanding, lambda p, r: p.send_signal(signal.SIGTERM))),
        None)
    # ---- demo
    add("demo", "--out a foreign folder", t_scene(prepare=_foreign("notes.txt"), argv=lambda r: _demo(r, "o")), 4)
    add("demo", "rerun keeps a file the user added",
        t_scene(prepare=lambda r: (_quiet(_demo(r)), (r / "demo" / "notes.txt").write_text("mine"))[1] and
                [r / "demo" / "notes.txt"], argv=lambda r: _demo(r)), 0)
    add("demo", "--out a file", t_scene(argv=lambda r: _demo(r, "t.txt")), 4)
    add("demo", "--out the model folder", t_scene(argv=lambda r: _demo(r, "m")), 4)
    add("demo", "two demos at once", t_scene(argv=lambda r: _demo(r, "demo", "--steps", "30"),
                                             during=_rival_run(lambda r: _demo(r, "demo", "--steps", "30"),
                                                           wait_for=lambda r: r / "demo")), 4)
    for opts in (["--hidden", "-8"], ["--layers", "0"], ["--width", "0"], ["--lr", "nan"], ["--hidden", "1000000"],
                 ["--batch-size", "100000000"], ["--heads", "3"]):
        add("demo", " ".join(opts), t_scene(argv=lambda r, o=opts: _demo(r, "demo", *o)), 2)
    add("demo", "--text a FIFO", t_scene(prepare=_fifo_at("f.txt"),
                                         argv=lambda r: [*_demo(r)[:2], str(r / "f.txt"), *_demo(r)[3:]]), 3)
    add("demo", "--text not UTF-8", t_scene(prepare=lambda r: (r / "b.txt").write_bytes(b"\xff\xfe" * 500),
                                            argv=lambda r: [*_demo(r)[:2], str(r / "b.txt"), *_demo(r)[3:]]), 3)
    add("demo", "--text missing", t_scene(argv=lambda r: [*_demo(r)[:2], str(r / "none.txt"), *_demo(r)[3:]]), 3)
    add("demo", "--debug prints a traceback", t_scene(argv=lambda r: ["--debug", *_demo(r, "demo", "--layers", "0")]), 2)
    for backend, opts in (("jax", ["--device", "gpu"]), ("mlx", ["--device", "cpu:7"])):
        add(f"{backend} route", "demo " + " ".join(opts), t_scene(argv=lambda r, b=backend, o=opts: _demo(r, "demo", *o,
                                                                                                          backend=b)), 2)
    for backend, opts in (("jax", ["--device", "gpu"]), ("mlx", ["--device", "cpu:7"]), ("mlx", ["--device", "gpu"])):
        add(f"{backend} route", "expand " + " ".join(opts), t_scene(argv=lambda r, b=backend, o=opts: [
            "expand", str(r / "m"), str(r / "w"), "--quiet", "--backend", b, *o]), 2)
    # ---- paths with bytes that are not UTF-8, on every command that takes a model folder
    odd = lambda r: Path(os.fsdecode(os.fsencode(str(r)) + b"/s\xfe"))  # noqa: E731
    for name, argv in (("expand", lambda r: ["expand", str(odd(r) / "m"), str(odd(r) / "w"), "--quiet"]),
                       ("plan", lambda r: ["plan", str(odd(r) / "m"), "--width", "2"]),
                       ("verify", lambda r: ["verify", str(odd(r) / "m"), str(odd(r) / "m")]),
                       ("train", lambda r: _train(odd(r), "run", model="m", data="../d.npy"))):
        add("non-UTF-8 paths", f"{name} from a folder named with byte 0xfe",
            t_scene(prepare=lambda r: shutil.copytree(r / "m", odd(r) / "m") and None, argv=argv), 0)
    # ---- one source of truth
    add("checkpoint folder", "verify a folder with model.safetensors beside an index",
        t_scene(prepare=_single_beside_index, argv=lambda r: ["verify", str(r / "m"), str(r / "m")]), 3)
    add("checkpoint folder", "expand a folder with model.safetensors beside an index",
        t_scene(prepare=_single_beside_index, argv=lambda r: ["expand", str(r / "m"), str(r / "w"), "--quiet"]), 3)
    return out


def run_process_attack(attack: PAttack, root: Path) -> dict:
    import subprocess
    import threading

    argv, protected, during = attack.scene(root)
    before = _snapshot(protected)
    existing = {p for p in root.rglob("*")}
    proc = _spawn(argv, root)
    rival: list = []
    if during is not None:
        t = threading.Thread(target=lambda: rival.append(during(proc, root)), daemon=True)
        t.start()
    verdict = {"traceback": 0, "data loss": 0, "accepted corruption": 0, "hang": 0, "wrong class": 0}
    try:
        _, err = proc.communicate(timeout=PROCESS_ALARM_S)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        verdict["hang"], rc = 1, None
    if during is not None:
        t.join(PROCESS_ALARM_S)
    text = err.decode("utf-8", "replace")
    debug = "--debug" in argv
    if rc is not None and (rc < 0 or rc == 70 or ("Traceback" in text and not debug)):
        verdict["traceback"] = 1
    if debug and "Traceback" not in text:
        verdict["wrong class"] = 1
    after = _snapshot(protected)
    lost = [k for k, v in before.items() if after.get(k) != v]
    left = [str(p.relative_to(root)) for p in root.rglob("*") if io.TMP_MARK in p.name or
            (p not in existing and p.name == ".hyperclone-lock")]
    if lost or left or not _metrics_ok(root):
        verdict["data loss"] = 1
    other = rival[0] if rival and isinstance(rival[0], int) else None
    codes = [c for c in (rc, other) if c is not None]
    if attack.expect not in (0, None) and (rc == 0 if other is None else (codes and all(c == 0 for c in codes))):
        verdict["accepted corruption"] = 1
    elif attack.expect is not None and rc is not None and other is None and rc != attack.expect:
        verdict["wrong class"] = 1
    elif other is not None and not verdict["accepted corruption"] and (
            len(codes) != 2 or 0 not in codes or max(codes) not in (2, attack.expect)):
        verdict["wrong class"] = 1  # of two runs on one OUT one writes it, the other is refused (held, or done)
    verdict.update(rc=rc if other is None else (rc, other), stderr=text.strip()[-300:], lost=lost[:3], left=left[:3])
    return verdict


# ---------------------------------------------------------------- judging


def _snapshot(paths) -> dict:
    snap = {}
    for p in paths:
        p = Path(p)
        if not os.path.lexists(p):
            continue
        st = os.lstat(p)
        if stat.S_ISDIR(st.st_mode):
            for q in sorted(p.rglob("*")):
                if q.is_file() and not q.is_symlink():
                    snap[str(q)] = hashlib.sha256(q.read_bytes()).hexdigest()
            snap[str(p)] = "dir"
        elif stat.S_ISREG(st.st_mode):
            snap[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            snap[str(p)] = f"mode {st.st_mode}"
    return snap


def run_attack(attack: Attack, root: Path) -> dict:
    with contextlib.redirect_stdout(_io.StringIO()), contextlib.redirect_stderr(_io.StringIO()):
        argv, protected, ctx = attack.scene(root)
    before = _snapshot(protected)
    dst_existed = os.path.lexists(root / "dst")
    err = _io.StringIO()
    verdict = {"traceback": 0, "data loss": 0, "accepted corruption": 0, "hang": 0, "wrong class": 0}

    def alarm(signum, frame):
        raise _Hang

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(ALARM_S)
    rc = None
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(_io.StringIO()), \
                (ctx if ctx is not None else contextlib.nullcontext()):
            rc = main(argv)
    except _Hang:
        verdict["hang"] = 1
    except BaseException as exc:  # noqa: BLE001 - an escape from main is what we count
        verdict["traceback"] = 1
        err.write(f"escaped: {type(exc).__name__}: {exc}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    text = err.getvalue()
    if "Traceback" in text or rc == 70:
        verdict["traceback"] = 1
    after = _snapshot(protected)
    lost = [k for k, v in before.items() if after.get(k) != v]
    left = [p.name for p in root.iterdir() if io.TMP_MARK in p.name]
    rival = root / RIVAL
    if rival.exists():  # a rival wrote dst during the run: it must be exactly as the rival left it
        owned = json.loads(rival.read_text())
        lost += [k for k, v in owned.items() if _snapshot([root / "dst"]).get(k) != v]
    partial = rc not in (0, None) and not dst_existed and not rival.exists() and os.path.lexists(root / "dst") \
        and argv[0] == "expand" and argv[2] == str(root / "dst")
    if lost or left or partial or (root / SENTINEL).exists():
        verdict["data loss"] = 1
    if attack.expect not in (0, None) and rc == 0:
        verdict["accepted corruption"] = 1
    elif attack.expect is not None and rc not in (None, attack.expect):
        verdict["wrong class"] = 1
    verdict.update(rc=rc, stderr=text.strip()[-300:], lost=lost[:3], left=left)
    return verdict


COUNTS = ("traceback", "data loss", "accepted corruption", "hang", "wrong class")


def tally(attacks, keep: Optional[str] = None) -> tuple:
    rows, failures = {}, []
    base = Path(tempfile.mkdtemp(prefix="hyperclone-attacks-", dir=keep))
    try:
        for i, a in enumerate(attacks):
            root = base / f"{i:04d}"
            root.mkdir()
            try:
                v = run_process_attack(a, root) if isinstance(a, PAttack) else run_attack(a, root)
            finally:
                while CLEANUPS:
                    CLEANUPS.pop()()
            if os.environ.get("HYPERCLONE_TALLY_VERBOSE"):
                print(f"{a.category} / {a.name}: rc={v['rc']} {[c for c in COUNTS if v[c]]}", file=sys.stderr,
                      flush=True)
            row = rows.setdefault(a.category, dict.fromkeys(("attacks",) + COUNTS, 0))
            row["attacks"] += 1
            for c in COUNTS:
                row[c] += v[c]
            if any(v[c] for c in COUNTS):
                failures.append((a, v))
            shutil.rmtree(root, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return rows, failures


def print_table(rows: dict) -> dict:
    total = dict.fromkeys(("attacks",) + COUNTS, 0)
    print(f"{'category':28s} {'attacks':>7s} " + " ".join(f"{c:>10s}" for c in ("tracebacks", "data loss",
                                                                                 "accepted", "hangs", "wrong cls")))
    for cat, row in rows.items():
        for k in total:
            total[k] += row[k]
        print(f"{cat:28s} {row['attacks']:7d} " + " ".join(f"{row[c]:10d}" for c in COUNTS))
    print(f"{'TOTAL':28s} {total['attacks']:7d} " + " ".join(f"{total[c]:10d}" for c in COUNTS))
    return total


def main_(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=int, default=1, help="run every N-th attack only")
    ap.add_argument("--only", choices=("in-process", "processes"), help="run one of the two attack sets only")
    ap.add_argument("--match", default="", help="run only attacks whose category or name holds this text")
    args = ap.parse_args(argv)
    attacks = ([] if args.only == "processes" else all_attacks()) + \
        ([] if args.only == "in-process" else process_attacks())
    attacks = [a for a in attacks if args.match in f"{a.category} / {a.name}"][:: args.every]
    rows, failures = tally(attacks)
    for a, v in failures:
        print(f"FAIL {a.category} / {a.name}: rc={v['rc']} " + ", ".join(c for c in COUNTS if v[c])
              + f"  {v['stderr'][-200:]!r} lost={v['lost']} left={v['left']}")
    total = print_table(rows)
    return 1 if any(total[c] for c in COUNTS[:4]) else 0


if __name__ == "__main__":
    sys.exit(main_())
