"""``python -m hyperclone_core.model.families > docs/families.md``: the coverage table."""

import sys

from .coverage import markdown

if __name__ == "__main__":
    sys.stdout.write(markdown())
