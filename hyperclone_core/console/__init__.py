"""What a person at a terminal meets: the shared parts of every ``hyperclone`` command.

One job per module:

- ``argparsing``: the argument parser (a bad option is a usage error, exit 2);
- ``boundary``: the one error boundary (exit classes, ``--debug``);
- ``progress``: one progress bar for every long job;
- ``recipe``: recipe files (``--config FILE``) and the replay record a run writes.
"""
