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


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_a_status_line_is_never_glued_onto_the_bar():
    from hyperclone_core.console.progress import say

    bar_out, log = _Tty(), io.StringIO()
    bar = Progress(10, "demo", "step", stream=bar_out)
    bar.update(3, loss=2.0)
    say("training clone: 10 steps", log)  # the open bar is cleared, the line printed, the bar redrawn
    bar.close()
    text = bar_out.getvalue()
    assert "\r\x1b[K" in text and text.rstrip("\n").endswith("\x1b[K")
    assert log.getvalue() == "training clone: 10 steps\n"
    say("after", log)  # no bar open: a plain line
    assert log.getvalue().endswith("after\n")


def test_the_eta_waits_for_a_measured_rate_and_ignores_start_up(monkeypatch):
    import hyperclone_core.console.progress as P

    now = [100.0]
    monkeypatch.setattr(P.time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    bar = Progress(101, "train", "step", stream=out, every=0.0)
    now[0] += 60.0  # a minute of start-up and compilation before the first step ends
    bar.update(1)
    assert "eta --:--" in out.getvalue().splitlines()[-1]
    for _ in range(10):
        now[0] += 0.5
        bar.update(1)
    last = out.getvalue().splitlines()[-1]
    assert "2 step/s" in last and "eta 00:45" in last  # 90 steps left at the measured 2 step/s
    bar.close()
