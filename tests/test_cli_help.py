"""The CLI explains itself: --version, every option of every command has help that
states its default, each command's help ends with examples that parse, plain text
(no markup), and the nox sessions the docs name exist."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hyperclone_core import __version__
from hyperclone_core.console.argparsing import HelpFormatter
from hyperclone_core.cli import build_parser, main
from hyperclone_core.demo.cli import build_parser as demo_parser
from hyperclone_core.train.cli import build_parser as train_parser

ROOT = Path(__file__).resolve().parents[1]


def parsers() -> dict:
    """Every parser a user reaches: the main one, each subcommand's, train's and demo's."""
    main_parser = build_parser()
    out = {"hyperclone": main_parser}
    out.update({f"hyperclone {name}": p for name, p in main_parser.commands.items()})
    out["hyperclone train"] = train_parser()
    out["hyperclone demo"] = demo_parser()
    return out


def visible(parser):
    return [a for a in parser._actions if a.help is not argparse.SUPPRESS
            and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def test_every_command_is_reached():
    names = set(parsers())
    subs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {f"hyperclone {c}" for c in subs.choices} <= names


@pytest.mark.parametrize("name", sorted(parsers()))
def test_every_option_has_help_with_its_default(name):
    parser = parsers()[name]
    fmt = HelpFormatter(parser.prog)
    actions = visible(parser)
    assert actions
    for a in actions:
        assert a.help and a.help.strip(), f"{name}: {a.dest} has no help"
        if a.option_strings and not isinstance(a, argparse._VersionAction):
            text = fmt._get_help_string(a) % {"default": a.default}
            assert "default" in text, f"{name} {a.option_strings[0]}: the help does not state the default"


@pytest.mark.parametrize("name", sorted(parsers()))
def test_help_is_plain_text_and_ends_with_examples_that_parse(name):
    parser = parsers()[name]
    text = parser.format_help()
    assert "``" not in text and "`" not in text and ":ref:" not in text and "**" not in text, text
    assert "examples:" in text
    examples = text.split("examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert examples and all(x.strip().startswith("hyperclone") for x in examples)
    if name == "hyperclone":
        return
    for line in examples:
        argv = shlex.split(line.split(" #")[0].split(" > ")[0])[len(name.split()):]  # (shell redirection)
        if "--config" in argv or "COMMAND" in argv:
            continue  # names a file that does not exist here
        parser.parse_args(argv)  # raises (a UsageError) on an example that does not parse


def test_version(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"hyperclone {__version__} ") and "numpy" in out


def test_help_exits_zero_for_every_command(capsys):
    for argv in (["--help"], ["expand", "--help"], ["plan", "--help"], ["verify", "--help"], ["backends", "--help"],
                 ["train", "--help"], ["demo", "--help"]):
        assert main(argv) == 0, argv
        out = capsys.readouterr().out
        assert out.startswith("usage: hyperclone") and "examples:" in out, argv


def nox_sessions() -> set:
    if shutil.which("nox") is None:
        pytest.skip("nox is not installed")
    r = subprocess.run(["nox", "-l", "-f", str(ROOT / "noxfile.py")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return set(re.findall(r"^[*-] ([\w.-]+)", r.stdout, re.M))


def test_nox_sessions_the_docs_name_exist():
    names = nox_sessions()
    assert {"tests", "core", "lint", "torch", "jax", "mlx", "conformance-numpy", "conformance-torch"} <= names
    docs = [ROOT / "README.md", ROOT / "noxfile.py", ROOT / "conformance" / "README.md", *ROOT.glob("docs/*.md"),
            *ROOT.glob("backends/*/README.md")]
    named = set()
    for path in docs:
        for words in re.findall(r"nox (?:-s|--session) ((?:[A-Za-z][\w.-]* ?)+)", path.read_text()):
            named.update((path.name, w) for w in words.split())
    assert named, "the docs name no nox session"
    missing = {(f, s) for f, s in named if s not in names}
    assert not missing, f"docs name nox sessions that do not exist: {sorted(missing)}"


def test_the_console_script_is_the_same_command():
    exe = shutil.which("hyperclone")
    if exe is None:
        pytest.skip("the hyperclone script is not on PATH")
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith(f"hyperclone {__version__}")
    r = subprocess.run([sys.executable, "-m", "hyperclone_core.cli", "expand"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
