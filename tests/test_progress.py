"""The progress bar as a log sees it (stderr not a terminal): every phase is named, however fast."""
import io

from hyperclone_core.console.progress import Progress


def test_log_names_every_phase_even_when_faster_than_the_interval():
    out = io.StringIO()
    bar = Progress(30, "demo", "step", stream=out, every=3600.0)
    for label in ("demo: pretrain small", "demo: train clone", "demo: train random"):
        bar.set_label(label)
        for _ in range(10):
            bar.update(1, loss=1.0)
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == ["demo: pretrain small", "demo: train clone",
                                                       "demo: train random"]
    assert lines[0].split("] ")[1].startswith("10/30") and lines[-1].split("] ")[1].startswith("30/30")


def test_log_writes_nothing_twice_and_nothing_when_disabled():
    out = io.StringIO()
    bar = Progress(5, "train", "step", stream=out, every=3600.0)
    bar.set_label("phase")           # nothing done yet: no line
    for _ in range(5):
        bar.update(1)                # the last update draws the 5/5 line
    bar.set_label("other")          # nothing new since: no repeat
    bar.close()
    assert len(out.getvalue().splitlines()) == 1
    quiet = io.StringIO()
    bar = Progress(5, "train", stream=quiet, enabled=False)
    bar.update(5)
    bar.set_label("x")
    bar.close()
    assert quiet.getvalue() == ""


def test_unfinished_run_gets_its_last_line_on_close():
    out = io.StringIO()
    bar = Progress(100, "train", "step", stream=out, every=3600.0)
    bar.update(7)
    bar.close()
    assert "7/100" in out.getvalue()
