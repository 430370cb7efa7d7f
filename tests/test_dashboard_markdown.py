"""Text a user, a file or the run store supplies is shown as text, never as Markdown/HTML:
a run name ``[click me](https://…)`` is no link, ``![t](http://…)`` no image the viewer's
browser would fetch (issue: shared-server security, item 2)."""
from __future__ import annotations

import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_
from streamlit.testing.v1 import AppTest

from core.runs import RunStore
from dashboard.text import md, plain

from test_dashboard import make_app, ok

LINK = "[click me](https://example.invalid/phish)"
IMAGE = "![t](http://127.0.0.1:9/track.png)"
BOLD = "**loud**"
HOSTILE = f"{LINK} {IMAGE} {BOLD} :red[x] $x$ <b>h</b>"
RAW = ("](https://example.invalid", "![t](", "**loud**", ":red[", "$x$", "<b>")


def _unescape(markdown: str) -> str:
    """CommonMark's backslash escapes, undone (the independent reading of md's output)."""
    return re.sub(r"\\([" + re.escape(string.punctuation) + "])", r"\1", markdown)


@pytest.mark.slow  # a property scan
@settings(max_examples=300, deadline=None)
@given(st_.text(max_size=80))
def test_md_reads_back_as_the_same_text_and_leaves_no_punctuation_active(text):
    out = md(text)
    assert _unescape(out) == re.sub(r"[\r\n\t\v\f\u2028\u2029]+", " ", text)
    # every ASCII punctuation character in the output is escaped by the backslash before it
    i = 0
    while i < len(out):
        if out[i] == "\\":
            assert out[i + 1] in string.punctuation, out
            i += 2
            continue
        assert out[i] not in string.punctuation, out
        i += 1
    assert "\n" not in out


def test_md_and_plain_on_the_reported_strings():
    assert md(LINK) == r"\[click me\]\(https\:\/\/example\.invalid\/phish\)"
    assert md("a\n# heading") == r"a \# heading"
    assert plain('<a href="https://example.invalid">x</a>') == (
        '&lt;a href="https://example.invalid"&gt;x&lt;/a&gt;')
    assert md("x" * 600).endswith("…") and len(md("x" * 600)) == 501


def _shown(at: AppTest) -> list[str]:
    """Every text the page rendered as Markdown: bodies and labels."""
    out = []
    for kind in ("markdown", "caption", "error", "warning", "info", "success", "title",
                 "header", "subheader", "metric", "button", "expander", "tabs"):
        for el in at.get(kind):
            for attr in ("value", "label", "body"):
                v = getattr(el, attr, None)
                if isinstance(v, str):
                    out.append(v)
    return out


def _no_active_markdown(at: AppTest) -> None:
    texts = _shown(at)
    for raw in RAW:
        hits = [t for t in texts if raw in t]
        assert not hits, (raw, hits)


def test_a_hostile_run_id_in_the_url_is_shown_as_text(runs_dir):
    for hostile in (LINK, IMAGE):
        at = make_app()
        at.query_params["run"] = hostile
        at.switch_page("pages/train.py").run()
        ok(at)
        _no_active_markdown(at)  # (the page says the run is not one it can show)


def test_hostile_run_fields_from_the_store_are_shown_as_text(runs_dir):
    store = RunStore(runs_dir)
    run_id = store.create_run(model=HOSTILE, dataset=HOSTILE, pruner=HOSTILE, sparsity=0.5,
                              config={"epochs": 1}, name=HOSTILE)
    store.log_epoch(run_id, 1, {"val_acc": 0.5, "val_loss": 1.0, "train_loss": 1.1})
    store.finish(run_id, "failed", reason=HOSTILE)
    at = make_app()
    at.query_params["run"] = run_id
    at.switch_page("pages/train.py").run()
    ok(at)
    texts = _shown(at)
    assert any(md(HOSTILE) in t for t in texts), texts
    _no_active_markdown(at)
    at.switch_page("pages/runs.py").run()
    ok(at)
    _no_active_markdown(at)
    # the runs chart's legend: plotly renders <b>, <a href> in names
    import json
    for chart in at.get("plotly_chart"):
        for trace in json.loads(chart.proto.spec).get("data", []):
            assert "<b>" not in str(trace.get("name", "")), trace.get("name")
