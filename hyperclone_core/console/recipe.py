"""Recipe files: every option of a command in a TOML file (``--config FILE``), and the
resolved recipe written beside a command's output so the run can be replayed.

A recipe is flat: one key per option, named as the option without its dashes
(``ffn_size = 4096`` or ``ffn-size = 4096``), positionals included (``src``,
``dst``, ``model_dir``).  Values are checked by the same converters the flags go
through, so a file cannot set what the command line could not.  Flags given on the
command line override the file.  The writer is ours (the standard library reads
TOML from 3.11 but writes none); it writes what the reader reads back unchanged.

Paths in a recipe are relative to the recipe's own folder (``src = "../small"``):
a written recipe carries no path of the machine that wrote it, and replays from any
working directory.  Reading, a relative path that starts with ``./`` or ``../``, or
names something beside the recipe, is taken from the recipe's folder; any other value
(a hub id such as ``org/name``, or a path relative to where the command runs) is used
as written.
"""

from __future__ import annotations

import argparse
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from ..errors import CheckpointError, UsageError
from ..io.paths import read_small

MAX_RECIPE_BYTES = 1 << 20
"""A recipe is a page of TOML; anything bigger is not one."""

CONFIG_HELP = ("a TOML recipe holding any of these options (keys as the long option names, e.g. "
               "ffn_size = 4096); flags on the command line override it; default: none")


def _toml_loader():
    try:
        import tomllib  # Python >= 3.11
        return tomllib
    except ModuleNotFoundError:
        try:
            import tomli  # the same parser, packaged for Python 3.10
            return tomli
        except ModuleNotFoundError:
            raise UsageError("--config: reading TOML on Python < 3.11 needs the tomli package; "
                             "install it (pip install tomli) or pass the options as flags") from None


def read(path) -> dict:
    """The table in the TOML file ``path``; one-line errors naming the file."""
    loader = _toml_loader()
    path = Path(path)
    try:  # the checkpoint reader's guard: a regular file only (a FIFO would block for ever), bounded
        raw = read_small(path, "recipe file", MAX_RECIPE_BYTES)
    except CheckpointError as exc:
        if not os.path.lexists(path):
            raise UsageError(f"--config {path}: no such file") from None
        raise UsageError(f"--config: {exc}") from None
    try:
        return loader.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"--config {path}: not UTF-8 text") from None
    except loader.TOMLDecodeError as exc:
        raise UsageError(f"--config {path}: invalid TOML: {exc}") from None


# ---------------------------------------------------------------- writing


def _key(k: str) -> str:
    if k and all(c.isascii() and (c.isalnum() or c in "_-") for c in k):  # TOML's bare keys
        return k
    return _string(k)


def _string(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _value(v: Any, where: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return repr(v)  # shortest repr: reads back to the same float
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x, where) for x in v) + "]"
    raise TypeError(f"{where}: a {type(v).__name__} cannot be written to TOML")


def dumps(doc: Mapping[str, Any], header: Iterable[str] = ()) -> str:
    """TOML text for a flat table (scalars and lists) with one level of sub-tables;
    ``header`` lines become comments at the top.  None values are left out (TOML has no
    null; an option left out takes its default)."""
    lines = [f"# {h}" if h else "#" for h in header]
    tables = []
    for k, v in doc.items():
        if v is None:
            continue
        if isinstance(v, Mapping):
            tables.append((k, v))
        else:
            lines.append(f"{_key(k)} = {_value(v, k)}")
    for name, table in tables:
        lines += ["", f"[{_key(name)}]"]
        lines += [f"{_key(k)} = {_value(v, f'{name}.{k}')}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def _utf8_only(doc: Mapping[str, Any], path) -> dict:
    """``doc`` less the values TOML cannot hold (a path with bytes that are not UTF-8),
    each named in a warning: the run goes on, its recipe says what it left out."""
    def fits(v) -> bool:
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(v, Mapping):
            return all(fits(k) and fits(x) for k, x in v.items())
        elif isinstance(v, (list, tuple)):
            return all(fits(x) for x in v)
        return True

    out = {}
    for k, v in doc.items():
        if fits(k) and fits(v):
            out[k] = v
        else:
            shown = str(v).encode("utf-8", "backslashreplace").decode("utf-8")
            name = Path(path).name.split(".hyperclone-tmp-")[0].lstrip(".") or Path(path).name  # never a temp name
            warnings.warn(f"{name}: leaves out {k} ({shown}): TOML holds UTF-8 text only, and this path's bytes are "
                          "not UTF-8; give it on the command line when replaying", stacklevel=3)
    return out


def write(path, doc: Mapping[str, Any], header: Iterable[str] = ()) -> Path:
    """Write ``doc`` as TOML to ``path`` atomically (a temp file renamed over it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(dumps(_utf8_only(doc, path), header), encoding="utf-8",
                   errors="backslashreplace")  # only a comment (the header's command) can still hold such bytes
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- parsing with a recipe


def _options(parser: argparse.ArgumentParser) -> dict:
    """dest -> action of every option a recipe may set."""
    skip = {"help", "config", "debug"}
    return {a.dest: a for a in parser._actions
            if a.dest not in skip and a.dest is not argparse.SUPPRESS and a.help is not argparse.SUPPRESS}


def _flag(a: argparse.Action) -> str:
    return next((s for s in a.option_strings if s.startswith("--")), a.dest.upper())


def _convert(path, key: str, value: Any, a: argparse.Action) -> Any:
    """``value`` as the flag would have produced it (same converter, same checks)."""
    where = f"--config {path}: {key} = {value!r}"
    if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise UsageError(f"{where}: {_flag(a)} is a switch; write true or false")
        return value if isinstance(a, argparse._StoreTrueAction) else not value
    if isinstance(value, Mapping):
        raise UsageError(f"{where}: a table is not an option value")
    many = a.nargs not in (None, "?") or isinstance(a, argparse._AppendAction)
    items = list(value) if isinstance(value, list) else [value]
    if not many and isinstance(value, list):
        raise UsageError(f"{where}: {_flag(a)} takes one value, not a list")
    if isinstance(a.nargs, int) and len(items) != a.nargs:
        raise UsageError(f"{where}: {_flag(a)} takes {a.nargs} values")
    out = []
    for item in items:
        if isinstance(item, bool) or isinstance(item, (list, Mapping)):
            raise UsageError(f"{where}: {_flag(a)} takes {a.metavar or a.dest.upper()}, not {item!r}")
        text = repr(item) if isinstance(item, float) else str(item)
        try:
            v = a.type(text) if a.type is not None else text
        except UsageError as exc:
            raise UsageError(f"--config {path}: {exc}") from None
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise UsageError(f"{where}: invalid value for {_flag(a)} ({exc})") from None
        if a.choices is not None and v not in a.choices:
            raise UsageError(f"{where}: {_flag(a)} must be one of {', '.join(map(repr, a.choices))}")
        out.append(v)
    return out if many else out[0]


def _given(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set:
    """The dests the command line itself sets (abbreviations included): parsed once
    with every default suppressed."""
    saved = [(a, a.default) for a in parser._actions]
    required = [(a, a.required) for a in parser._actions]
    try:
        for a, _ in saved:
            a.default = argparse.SUPPRESS
            a.required = False
        ns, _ = parser.parse_known_args(list(argv))
    finally:
        for a, d in saved:
            a.default = d
        for a, r in required:
            a.required = r
    return set(vars(ns))


def portable(value, folder) -> Optional[str]:
    """A path option as a recipe in ``folder`` records it: relative to ``folder``
    (``../small``, ``./data.bin``).  A value that names nothing here and no file to be
    made here (a hub id such as ``org/name``) is kept as typed."""
    if value is None:
        return None
    text = os.fspath(value)
    if not (os.path.lexists(text) or os.path.isabs(text) or os.path.isdir(os.path.dirname(text) or ".")):
        return text
    try:
        rel = os.path.relpath(os.path.abspath(text), os.path.abspath(folder))
    except ValueError:  # pragma: no cover - another drive (Windows)
        return text
    return rel if rel.startswith("..") else os.path.join(".", rel)


def from_recipe(value: Any, path) -> Any:
    """A recipe's path value as the command uses it: relative ones written by
    ``portable`` (or naming something beside the recipe) are taken from the recipe's
    folder; anything else is kept."""
    if not isinstance(value, str) or not value or os.path.isabs(value):
        return value
    folder = os.path.dirname(os.fspath(path)) or "."
    beside = os.path.join(folder, value)
    if value.startswith(("./", "../", "." + os.sep, ".." + os.sep)) or os.path.lexists(beside):
        return os.path.normpath(beside)
    return value


def apply(parser: argparse.ArgumentParser, argv: Sequence[str], path, ignore: Iterable[str] = (),
          paths: Iterable[str] = ()) -> dict:
    """Make the recipe at ``path`` the defaults of ``parser`` (so flags in ``argv``
    override it); returns the recipe's values by dest.  An unknown key, a bad value,
    or two options of one mutually exclusive group in the file are refused; keys in
    ``ignore`` are skipped (another command's options); the dests in ``paths`` are
    paths, taken relative to the recipe's folder (``from_recipe``)."""
    doc = read(path)
    options = _options(parser)
    skip = set(ignore)
    path_dests = set(paths)
    values = {}
    for key, value in doc.items():
        dest = key.replace("-", "_")
        if dest in skip:
            continue
        if dest not in options:
            known = ", ".join(sorted(options))
            raise UsageError(f"--config {path}: unknown option {key!r}; {parser.prog} takes: {known}")
        if dest in values:
            raise UsageError(f"--config {path}: {_flag(options[dest])} is set twice (as {key!r} and under its "
                             "other spelling); keep one")
        if dest in path_dests:
            value = from_recipe(value, path)
        values[dest] = _convert(path, key, value, options[dest])
    given = _given(parser, argv)
    for group in parser._mutually_exclusive_groups:
        dests = [a.dest for a in group._group_actions]
        in_file = [d for d in dests if d in values]
        if len(in_file) > 1:
            raise UsageError(f"--config {path}: {' and '.join(in_file)} exclude each other; keep one")
        if in_file and any(d in given for d in dests):
            del values[in_file[0]]  # the command line chose another member of the group
    parser.set_defaults(**values)
    return values


def config_path(argv: Sequence[str]) -> Optional[str]:
    """The ``--config`` value in ``argv`` (``--config F`` or ``--config=F``), or None."""
    argv = list(argv)
    found = []
    for k, tok in enumerate(argv):
        if tok == "--":
            break
        if tok == "--config":
            if k + 1 >= len(argv):
                raise UsageError("--config needs a TOML file")
            found.append(argv[k + 1])
        elif tok.startswith("--config="):
            found.append(tok.split("=", 1)[1])
    if len(found) > 1:
        raise UsageError(f"--config is given {len(found)} times ({', '.join(found)}); a run reads one recipe")
    return found[0] if found else None


def parse(parser: argparse.ArgumentParser, argv: Sequence[str], required: Sequence[str] = (),
          paths: Iterable[str] = ()) -> argparse.Namespace:
    """Parse ``argv`` with ``parser``, the ``--config`` recipe (if any) as defaults.
    ``required`` names dests that must come from the command line or the recipe;
    ``paths`` the dests that are paths (relative to the recipe's folder in a recipe)."""
    path = config_path(argv)
    if path is not None:
        apply(parser, argv, path, paths=paths)
    args = parser.parse_args(list(argv))
    missing = [d for d in required if getattr(args, d, None) is None]
    if missing:
        names = ", ".join(_flag(_options(parser)[d]) for d in missing)
        raise UsageError(f"{parser.prog} needs {names} (on the command line, or as "
                         f"{', '.join(missing)} in a --config recipe); see `{parser.prog} --help`")
    return args


def resolved(parser: argparse.ArgumentParser, args: argparse.Namespace, exclude: Iterable[str] = ()) -> dict:
    """The value of every option, in the parser's order (what a recipe replays)."""
    skip = set(exclude)
    out = {}
    for dest in _options(parser):
        if dest in skip or not hasattr(args, dest):
            continue
        v = getattr(args, dest)
        out[dest] = list(v) if isinstance(v, tuple) else v
    return out


def header(command: str, version: str, replay_into: Optional[str] = None) -> list:
    """The comment lines at the top of a written recipe; ``replay_into``: where its
    replay writes (a fresh folder, so the command runs as written)."""
    lines = [f"hyperclone {version}: the resolved options of this `hyperclone {command}` run (recipe file,",
             "flags and defaults together; paths relative to this file's folder). Replay it with:",
             f"  hyperclone {command} --config recipe.toml      (from this folder, or give the recipe's path)"]
    if replay_into:
        lines.append(f"which writes {replay_into}, a fresh folder beside this one (it must not exist yet).")
    return lines + ["Flags on that command line override these values."]


_EXPAND_DROP = ("progress", "force", "tolerance_default")


def replay_folder(out) -> str:
    """Where the replay of a run written to ``out`` goes: ``../NAME-replay``, relative
    to the recipe inside ``out``."""
    return os.path.join("..", f"{Path(os.path.abspath(out)).name}-replay")


def for_expand(options: Mapping[str, Any], strategy: str) -> dict:
    """``expand_checkpoint``'s arguments as the recipe ``hyperclone expand --config``
    reads: option names, paths relative to the destination (where the recipe is
    written; ``dst`` is the replay's fresh folder beside it), the strategy as resolved
    (None means its default), switches as the CLI spells them."""
    o = dict(options)
    dst = o.pop("dst")
    out = {"src": portable(o.pop("src"), dst), "dst": replay_folder(dst)}
    o["strategy"] = strategy
    o["no_verify"] = not o.pop("verify", True)
    o["max_shard_size"] = o.pop("max_shard_bytes", None)
    for k in _EXPAND_DROP:
        o.pop(k, None)
    out.update(o)
    return out


__all__ = ["CONFIG_HELP", "apply", "config_path", "dumps", "for_expand", "from_recipe", "header", "parse", "portable",
           "read",
           "replay_folder", "resolved", "write"]
