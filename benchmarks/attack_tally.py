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
                v = run_attack(a, root)
            finally:
                while CLEANUPS:
                    CLEANUPS.pop()()
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
    args = ap.parse_args(argv)
    attacks = all_attacks()[:: args.every]
    rows, failures = tally(attacks)
    for a, v in failures:
        print(f"FAIL {a.category} / {a.name}: rc={v['rc']} " + ", ".join(c for c in COUNTS if v[c])
              + f"  {v['stderr'][-200:]!r} lost={v['lost']} left={v['left']}")
    total = print_table(rows)
    return 1 if any(total[c] for c in COUNTS[:4]) else 0


if __name__ == "__main__":
    sys.exit(main_())
