"""Destination safety: no run of `hyperclone expand` may destroy data it was not asked to.

Each test reproduces one data-loss case found by the issue-9 attack run; races are
created in-process (a patched writer runs the rival step at the worst moment).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from hyperclone_core import io
from hyperclone_core.model import testing
from hyperclone_core.cli import main


@pytest.fixture()
def src(tmp_path):
    cfg = testing.CASES["llama"]
    return io.save_checkpoint(tmp_path / "src", cfg, testing.random_weights(cfg))


def expand(*args):
    return main(["expand", *[str(a) for a in args], "--quiet"])


def leftovers(folder):
    return [p.name for p in folder.iterdir() if io.TMP_MARK in p.name]


def tree(folder):
    """Every file under ``folder`` with its bytes: what must survive untouched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------- DST vs SRC


def test_dst_containing_src_with_force_keeps_the_source(tmp_path, capsys):
    cfg = testing.CASES["llama"]
    src = io.save_checkpoint(tmp_path / "models" / "team" / "llama", cfg, testing.random_weights(cfg))
    before = tree(src)
    rc = expand(src, tmp_path / "models", "--force")
    assert src.is_dir() and tree(src) == before, "the source was deleted"
    assert rc == 4 and "contains the source" in capsys.readouterr().err


def test_dst_inside_src_is_refused(src, capsys):
    before = tree(src)
    rc = expand(src, src / "wide")
    assert not (src / "wide").exists() and tree(src) == before
    assert rc == 4 and "inside the source" in capsys.readouterr().err


def test_dst_that_is_src_through_a_symlink_is_refused(src, tmp_path, capsys):
    (tmp_path / "alias").symlink_to(src)
    before = tree(src)
    rc = expand(src, tmp_path / "alias", "--force")
    assert tree(src) == before and rc == 4
    assert "is the source" in capsys.readouterr().err


# ---------------------------------------------------------------- what --force may replace


def _special(tmp_path, kind):
    p = tmp_path / "dst"
    if kind == "file":
        p.write_text("precious")
    elif kind == "fifo":
        os.mkfifo(p)
    else:
        try:
            os.mknod(p, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a twin of the null device
        except (PermissionError, OSError):
            pytest.skip("creating a device node needs privileges")
    return p


@pytest.mark.parametrize("kind", ["file", "fifo", "device"])
def test_force_never_replaces_a_non_folder(src, tmp_path, kind):
    """In a child process: opening a FIFO by mistake would block for ever."""
    dst = _special(tmp_path, kind)
    mode = os.lstat(dst).st_mode
    proc = subprocess.run([sys.executable, "-m", "hyperclone_core.cli", "expand", str(src), str(dst),
                           "--quiet", "--force"], capture_output=True, text=True, timeout=60)
    assert os.lstat(dst).st_mode == mode, f"the {kind} was replaced"
    assert leftovers(tmp_path) == [], "a parked copy was left behind"
    assert proc.returncode == 4 and "not a folder" in proc.stderr


def test_force_refuses_a_foreign_folder(src, tmp_path, capsys):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "thesis.tex").write_text("four years of work")
    rc = expand(src, dst, "--force")
    assert (dst / "thesis.tex").read_text() == "four years of work"
    err = capsys.readouterr().err
    assert rc == 4 and "not a previous hyperclone output" in err and "thesis.tex" not in leftovers(tmp_path)


def test_force_replaces_a_previous_output_and_an_empty_folder(src, tmp_path, commit_mode):
    dst = tmp_path / "dst"
    dst.mkdir()
    assert expand(src, dst, "--force") == 0  # empty: replaceable
    first = json.loads((dst / "hyperclone.json").read_text())
    assert expand(src, dst, "--force", "--seed", "7") == 0  # its own output: replaceable
    assert json.loads((dst / "hyperclone.json").read_text())["seed"] == 7 != first["seed"]
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- races


@pytest.fixture(params=["renameat2", "lock file"])
def commit_mode(request, monkeypatch):
    """Every race is run twice: with renameat2 (Linux) and with the lock-file fallback."""
    from hyperclone_core.io import atomic

    if request.param == "renameat2" and atomic._renameat2 is None:
        pytest.skip("renameat2 is not available here")
    if request.param == "lock file":
        monkeypatch.setattr(atomic, "_renameat2", None)
    return request.param


def _during_write(monkeypatch, action):
    """Run ``action`` once, after the last tensor is written and before the commit."""
    original = io.ShardedWriter.close
    done = []

    def close(self):
        original(self)
        if not done:
            done.append(1)
            action()

    monkeypatch.setattr(io.ShardedWriter, "close", close)


@pytest.mark.parametrize("force", [False, True])
def test_dst_created_meanwhile_is_never_replaced(src, tmp_path, monkeypatch, capsys, force, commit_mode):
    dst = tmp_path / "dst"

    def rival():
        dst.mkdir()
        (dst / "notes.txt").write_text("someone else's")

    _during_write(monkeypatch, rival)
    rc = expand(src, dst, *(["--force"] if force else []))
    assert (dst / "notes.txt").read_text() == "someone else's" and not (dst / "config.json").exists()
    assert rc == 4 and "while this run" in capsys.readouterr().err
    assert leftovers(tmp_path) == []


def test_two_expands_to_one_dst_do_not_both_win(src, tmp_path, monkeypatch, commit_mode):
    dst = tmp_path / "dst"
    inner = []

    def rival():
        inner.append(main(["expand", str(src), str(dst), "--quiet", "--seed", "3"]))

    _during_write(monkeypatch, rival)
    outer = expand(src, dst, "--seed", "4")
    assert inner == [0] and outer != 0, "both runs reported success"
    assert json.loads((dst / "hyperclone.json").read_text())["seed"] == 3  # the winner's output, intact
    assert leftovers(tmp_path) == []


def test_force_does_not_replace_a_dst_swapped_in_meanwhile(src, tmp_path, monkeypatch, commit_mode):
    """--force was given for the folder that existed at the start, not for a newer one."""
    dst = tmp_path / "dst"
    assert expand(src, dst) == 0

    def rival():
        os.rename(dst, tmp_path / "moved")
        dst.mkdir()
        (dst / "notes.txt").write_text("new data")

    _during_write(monkeypatch, rival)
    assert expand(src, dst, "--force") == 4
    assert (dst / "notes.txt").read_text() == "new data"


# ---------------------------------------------------------------- crash recovery


def test_a_parked_old_dst_is_restored_not_deleted(src, tmp_path, commit_mode):
    """A kill between parking the old DST and renaming the new one into place leaves
    the old one parked: the next run puts it back instead of deleting it."""
    dst = tmp_path / "dst"
    assert expand(src, dst, "--seed", "1") == 0
    before = tree(dst)
    parked = tmp_path / f".dst{io.TMP_MARK}{dead_pid()}-old"
    os.rename(dst, parked)
    rc = expand(src, dst)  # no --force: the restored folder must block it
    assert dst.is_dir() and tree(dst) == before, "the parked destination was not restored"
    assert rc == 4 and not parked.exists()


def test_a_parked_old_dst_beside_a_committed_new_one_is_dropped(src, tmp_path):
    """Killed after the new DST went into place: the replacement was complete."""
    dst = tmp_path / "dst"
    assert expand(src, dst) == 0
    parked = tmp_path / f".dst{io.TMP_MARK}{dead_pid()}-old"
    assert expand(src, parked.parent / "other") == 0
    os.rename(parked.parent / "other", parked)
    assert expand(src, dst, "--force") == 0
    assert leftovers(tmp_path) == []


def test_killed_mid_write_leaves_no_destination_and_next_run_cleans(src, tmp_path):
    """A real SIGKILL while tensors are being written (slowed down in the child only)."""
    dst = tmp_path / "dst"
    code = (
        "import os, signal, sys\n"
        "from hyperclone_core import io\n"
        "from hyperclone_core.cli import main\n"
        "orig = io.ShardedWriter.write_rows\n"
        "count = [0]\n"
        "def write(self, name, arr, raw=False):\n"
        "    orig(self, name, arr, raw)\n"
        "    count[0] += 1\n"
        "    if count[0] == 5:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "io.ShardedWriter.write_rows = write\n"
        f"main(['expand', {str(src)!r}, {str(dst)!r}, '--quiet'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not dst.exists()
    assert leftovers(tmp_path), "the killed run left no temp folder (was it killed mid-write?)"
    assert expand(src, dst) == 0
    assert dst.is_dir() and leftovers(tmp_path) == []


def test_killed_between_the_two_renames_the_old_dst_comes_back(src, tmp_path):
    """Lock-file mode parks the old DST for an instant: a SIGKILL right then, and the
    next run (no --force) restores it bit for bit."""
    dst = tmp_path / "dst"
    assert expand(src, dst, "--seed", "1") == 0
    before = tree(dst)
    code = (
        "import os, signal\n"
        "from hyperclone_core.io import atomic\n"
        "from hyperclone_core.cli import main\n"
        "atomic._renameat2 = None\n"
        "rename = os.rename\n"
        "def killing_rename(a, b):\n"
        f"    if str(b) == {str(dst)!r}:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    rename(a, b)\n"
        "os.rename = killing_rename\n"
        f"main(['expand', {str(src)!r}, {str(dst)!r}, '--quiet', '--force', '--seed', '2'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not dst.exists() and any(n.endswith("-old") for n in leftovers(tmp_path))
    assert expand(src, dst) == 4  # the restored folder is there again: no --force, no replacement
    assert tree(dst) == before and not any(n.endswith("-old") for n in leftovers(tmp_path))


def test_an_interrupted_swap_back_never_deletes_the_other_folder(src, tmp_path, monkeypatch):
    """Ctrl-C at the worst instant: after exchanging with a DST that turned out to be
    someone else's, before swapping back.  Their folder sits under our temp name; it
    must survive (and a later run must leave it alone)."""
    from hyperclone_core.io import atomic

    if atomic._renameat2 is None:
        pytest.skip("renameat2 is not available here")
    dst = tmp_path / "dst"
    assert expand(src, dst) == 0

    def rival():
        os.rename(dst, tmp_path / "moved")
        dst.mkdir()
        (dst / "notes.txt").write_text("new data")

    _during_write(monkeypatch, rival)
    real, calls = atomic._rename2, []

    def rename2(a, b, flags):
        calls.append(flags)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(a, b, flags)

    monkeypatch.setattr(atomic, "_rename2", rename2)
    assert expand(src, dst, "--force") == 130
    monkeypatch.undo()
    survivors = [p for p in tmp_path.rglob("notes.txt")]
    assert [p.read_text() for p in survivors] == ["new data"]
    assert expand(src, tmp_path / "elsewhere") == 0  # unrelated run: no effect on the stray folder
    assert [p.read_text() for p in tmp_path.rglob("notes.txt")] == ["new data"]


def test_a_signal_while_the_temp_folder_is_made_or_removed_waits_for_it(tmp_path):
    """Between mkdir and the end of __enter__ (no __exit__ yet) and inside the removal, a
    termination signal is held until the step is whole, then delivered: no temp folder
    is left behind, and the signal still stops the command."""
    import signal
    from pathlib import Path

    from hyperclone_core.io import atomic

    seen = []

    def handler(signum, frame):
        seen.append(signum)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        real_mkdir = Path.mkdir

        def mkdir_then_signal(self, *a, **k):
            real_mkdir(self, *a, **k)
            if atomic.TMP_MARK in self.name:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives right after the temp folder exists

        Path.mkdir = mkdir_then_signal
        try:
            with pytest.raises(KeyboardInterrupt):
                with atomic.AtomicDir(tmp_path / "dst"):
                    pass
        finally:
            Path.mkdir = real_mkdir
        assert seen == [signal.SIGTERM]
        assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())
    finally:
        signal.signal(signal.SIGTERM, old)
