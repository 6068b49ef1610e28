"""The argument parser every ``hyperclone`` command uses: a bad option becomes a
``UsageError`` (one line, exit code 2, through the CLI's error boundary) instead of
argparse's usage block and ``SystemExit``; help shows every option's default."""

from __future__ import annotations

import argparse
import textwrap

from ..errors import UsageError


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs (examples, exit codes) kept as written; an option whose
    help does not state its default gets ``(default: ...)`` appended (switches: off)."""

    def __init__(self, prog, max_help_position=30, width=None):
        super().__init__(prog, max_help_position=max_help_position, width=width)

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if action.default is None or action.default == "":
            return f"{text} (default: none)"
        if isinstance(action.default, (list, tuple)):
            return f"{text} (default: {' '.join(map(str, action.default))})"
        return f"{text} (default: %(default)s)"


def fill(text: str, width: int = 78) -> str:
    """A description wrapped once, here (the formatter keeps descriptions as written)."""
    return "\n\n".join(textwrap.fill(part, width) for part in text.split("\n\n"))


def examples(*lines: str) -> str:
    """An epilog of example command lines."""
    return "examples:\n" + "\n".join(f"  {x}" for x in lines)


__all__ = ["HelpFormatter", "Parser", "examples", "fill"]
