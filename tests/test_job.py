"""The dashboard's one background mechanism (``dashboard/state/job.py``): progress, results,
cancel, errors, slots, the session watchdog, stop at exit, and the cache rule (a job writes
only into the cache it read from). Jobs are driven by events the test sets; every wait is
bounded and fails the test only if it hangs."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
import weakref

import pytest
import torch

from dashboard.state import cache, job

HANG_S = 60  # a bounded wait: reached only if something hangs


@pytest.fixture
def session(request):
    """A session id of this test's own; its jobs are cancelled and forgotten afterwards."""
    sid = f"test-{request.node.name}"
    yield sid
    for j in job.jobs():
        if j.session == sid:
            j.cancel()
            assert j.join(HANG_S)
            job.forget(j)


def blocked(gate: threading.Event):
    """``fn`` that waits for ``gate`` (or its own cancel), then returns 42."""
    def fn(j: job.Job) -> int:
        while not gate.wait(0.05):
            if j.cancelled:
                return -1
        return 42
    return fn


def test_progress_results_and_result(session):
    step, go = threading.Event(), threading.Event()

    def fn(j):
        j.progress(0.25, "a quarter")
        j.publish(first=1)
        j.append(curve=(1, 0.5))
        step.set()
        assert go.wait(HANG_S)
        j.append(curve=(2, 0.4))
        return "the answer"

    j = job.start("t", fn, session=session, label="a test", info={"epochs": 3})
    assert step.wait(HANG_S)
    snap = j.snapshot()
    assert snap["status"] == "running" and snap["text"] == "a quarter"
    assert snap["fraction"] == 0.25 and snap["eta"] is not None and "elapsed" in snap
    assert snap["results"] == {"first": 1, "curve": [(1, 0.5)]}
    assert snap["label"] == "a test" and snap["epochs"] == 3 and not snap["cancel_requested"]
    go.set()
    assert j.join(HANG_S)
    assert j.status == "done" and j.result == "the answer" and j.error is None
    assert snap["results"]["curve"] == [(1, 0.5)]  # the earlier snapshot is a copy
    end = j.snapshot()
    assert end["results"]["curve"] == [(1, 0.5), (2, 0.4)]
    assert end["fraction"] == 1.0 and end["eta"] is None and end["version"] > snap["version"]
    assert job.current("t", session) is j and job.find(j.id) is j


def test_follow_returns_on_news_or_at_the_end(session):
    go, more = threading.Event(), threading.Event()

    def fn(j):
        assert go.wait(HANG_S)
        j.publish(n=1)
        assert more.wait(HANG_S)

    j = job.start("t", fn, session=session)
    seen = job.follow(j)["version"]  # at once
    assert not j.wait(seen, 0.0)  # nothing new yet
    go.set()
    snap = job.follow(j, seen, HANG_S)
    assert snap["results"] == {"n": 1} and snap["status"] == "running"
    more.set()
    snap = job.follow(j, snap["version"], HANG_S)
    assert snap["status"] == "done"


def test_cancel_between_steps_keeps_the_reason(session):
    j = job.start("t", blocked(threading.Event()), session=session)
    assert j.cancel("the user asked")
    assert j.join(HANG_S)
    assert j.status == "cancelled" and j.reason == "the user asked" and j.result == -1
    assert not j.cancel()  # over already


def test_cancel_interrupts_a_forward(session):
    inside = threading.Event()
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU())

    def fn(j):
        with torch.no_grad():
            while True:  # never looks at j.cancelled: only the forward hook can stop it
                model(torch.zeros(1, 8))
                inside.set()

    j = job.start("t", fn, session=session, interrupt=True)
    assert inside.wait(HANG_S)
    j.cancel()
    assert j.join(HANG_S)
    assert j.status == "cancelled" and j.reason == "cancelled"


@pytest.mark.parametrize("raised, status, reason", [
    (ValueError("bad input"), "failed", "ValueError: bad input"),
    (job.Failed("loss is not finite at step 3"), "failed", "loss is not finite at step 3"),
    (job.study.Cancelled("after 3 points"), "cancelled", "after 3 points"),
])
def test_how_an_exception_ends_a_job(session, raised, status, reason):
    def fn(j):
        raise raised

    j = job.start("t", fn, session=session)
    assert j.join(HANG_S)
    assert (j.status, j.reason) == (status, reason)
    assert j.error is (raised if status == "failed" else None)


def test_a_slot_reuses_replaces_or_supersedes(session):
    gate = threading.Event()
    a = job.start("t", blocked(gate), session=session, signature="a", basis="model-1")
    assert job.start("t", blocked(gate), session=session, signature="a", basis="model-1") is a
    b = job.start("t", blocked(gate), session=session, signature="b", basis="model-1")
    # the same inputs: a finishes its step (its work may serve b), it is not interrupted
    assert a.stop_event.is_set() and not a.cancel_event.is_set()
    c = job.start("t", blocked(gate), session=session, signature="c", basis="model-2")
    assert b.cancel_event.is_set()  # other inputs: at once
    assert job.current("t", session) is c
    for j in (a, b):
        assert j.join(HANG_S) and j.status == "cancelled"
    assert a.reason == "superseded by newer settings"
    gate.set()
    assert c.join(HANG_S) and c.status == "done"
    # an ended job with the signature is reused (done and cancelled by default) …
    assert job.start("t", blocked(gate), session=session, signature="c") is c
    # … unless restart
    d = job.start("t", blocked(gate), session=session, signature="c", restart=True)
    assert d is not c and d.join(HANG_S)

    def fails(j):
        raise OSError("disk")

    e = job.start("u", fails, session=session, signature="x")
    assert e.join(HANG_S) and e.status == "failed"
    assert job.start("u", fails, session=session, signature="x", reuse=("failed",)) is e
    f = job.start("u", fails, session=session, signature="x")  # default: a failure is retried
    assert f is not e and f.join(HANG_S)
    job.forget(f)
    assert job.current("u", session) is None


def test_the_watchdog_cancels_the_jobs_of_an_ended_session(session, monkeypatch):
    gone, here = session + "-gone", session + "-here"
    gate = threading.Event()
    a = job.start("t", blocked(gate), session=gone)
    b = job.start("t", blocked(gate), session=here)
    server = job.start("t", blocked(gate), session=job.SERVER, key=session)
    assert job.sweep_ended_sessions(alive=lambda sid: sid != gone) == [a]
    assert a.join(HANG_S) and a.status == "cancelled" and "session ended" in a.reason
    assert b.running and server.running  # server jobs outlive every session
    job.sweep_ended_sessions(alive=lambda sid: sid != gone)
    assert job.current("t", gone) is None  # an ended job of an ended session is forgotten

    # the watchdog thread does the same by itself (within WATCH_S)
    monkeypatch.setattr(job, "_alive", lambda sid: sid != here)
    assert b.join(HANG_S) and "session ended" in b.reason
    gate.set()
    assert server.join(HANG_S) and server.status == "done"
    job.forget(server)


def test_stop_all_cancels_and_joins_every_running_job(session):
    gate = threading.Event()
    started = [job.start("t", blocked(gate), session=session, key=i) for i in range(3)]
    job.stop_all(join_s=HANG_S)
    for j in started:
        assert not j.thread.is_alive()
        assert j.status == "cancelled" and j.reason == "the server is stopping"


@pytest.mark.slow  # the whole CLI end to end (CI runs it)
def test_a_process_exits_cleanly_while_a_job_works(tmp_path):
    """A job still working at interpreter exit is cancelled and joined by the atexit hook:
    the process ends with status 0."""
    script = textwrap.dedent("""
        from core import boot
        boot.configure()
        import threading
        from dashboard.state import job
        inside = threading.Event()
        def fn(j):
            while not j.cancelled:
                inside.set()
                j.sleep(0.01)
            print("stopped", flush=True)
        job.start("exit-test", fn, session="s")
        assert inside.wait(60)
        print("exiting", flush=True)
    """)
    env = {**os.environ, "PRUNELENS_RUNS_DIR": str(tmp_path / "runs")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.stdout.split() == ["exiting", "stopped"], done.stderr[-2000:]
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_job_keeps_nothing_of_its_work_once_ended(session):
    class Big:  # stands for a model and its data
        pass

    big = Big()
    probe = weakref.ref(big)
    gate = threading.Event()

    def make(thing):
        def fn(j):
            assert gate.wait(HANG_S)
            return len(repr(thing)) > 0
        return fn

    j = job.start("t", make(big), session=session)
    del big
    gate.set()
    assert j.join(HANG_S) and j.result is True
    gc.collect()
    assert probe() is None


# ---------------------------------------------------------------------------- the cache rule

@cache.byte_cached(size=lambda v: 8)
def _square(x: int) -> int:
    return x * x


def test_a_job_writes_only_into_the_cache_it_started_with(session, monkeypatch):
    """A job started before the server's cache is swapped keeps writing into the old one; the
    new one receives nothing from it (the review's defect: a prefetch thread filled the cache
    a test had just put in place)."""
    old, new = cache.ByteLRU(1 << 20), cache.ByteLRU(1 << 20)
    monkeypatch.setattr(cache, "BIG", old)
    reached, go = threading.Event(), threading.Event()

    def fn(j):
        reached.set()
        assert go.wait(HANG_S)
        return _square(7), _square.cached(7)

    j = job.start("t", fn, session=session)
    assert reached.wait(HANG_S)
    monkeypatch.setattr(cache, "BIG", new)  # swapped while the job works
    go.set()
    assert j.join(HANG_S) and j.result == (49, True)
    assert len(old) == 1 and len(new) == 0
    assert _square(3) == 9 and len(new) == 1 and len(old) == 1  # the page's own calls: new
    later = job.start("t2", lambda j: _square(5), session=session)
    assert later.join(HANG_S) and len(new) == 2 and len(old) == 1  # a job started now: new
