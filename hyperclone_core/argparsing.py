"""The argument parser every ``hyperclone`` command uses: a bad option becomes a
``UsageError`` (one line, exit code 2, through the CLI's error boundary) instead of
argparse's usage block and ``SystemExit``."""

from __future__ import annotations

import argparse

from .errors import UsageError


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


__all__ = ["Parser"]
