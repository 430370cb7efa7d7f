"""Text that a user, a file or the run store supplies, made safe to show.

Streamlit renders ``st.markdown``/``st.caption``/``st.error``… (and widget, tab and expander
labels) as GitHub-flavoured Markdown with its own directives (``:red[…]``, ``$…$``): a run
name ``[click me](https://…)`` would be a link, ``![t](http://…)`` an image the viewer's
browser fetches. Plotly renders a subset of HTML in every text (``<a href>``, ``<b>``). So
every such text goes through :func:`md` (Markdown) or :func:`plain` (plotly) where it is
shown; our own literal strings do not need to.
"""
from __future__ import annotations

import html
import re
import string

# CommonMark lets a backslash escape any ASCII punctuation; escaping all of it also disarms
# Streamlit's directives (``:color[…]``, ``:material/…:``), LaTeX (``$``), GFM autolinks
# (``https\:\/\/…``, ``www\.…``), tables (``|``) and raw HTML (``<``).
_PUNCTUATION = re.compile("([" + re.escape(string.punctuation) + "])")
_BREAKS = re.compile(r"[\r\n\t\v\f\u2028\u2029]+")


def md(value: object, limit: int = 500) -> str:
    """``value`` as Markdown that renders as exactly its text, on one line.

    Every ASCII punctuation character is backslash-escaped and line breaks become spaces (a
    new line could start a heading, a list or a code block); text past ``limit`` characters
    is cut with an ellipsis.
    """
    text = _BREAKS.sub(" ", str(value))
    if len(text) > limit:
        text = text[:limit] + "…"
    return _PUNCTUATION.sub(r"\\\1", text)


def plain(value: object, limit: int = 200) -> str:
    """``value`` for a plotly title, label, legend or hover text: HTML-escaped, one line."""
    text = _BREAKS.sub(" ", str(value))
    if len(text) > limit:
        text = text[:limit] + "…"
    return html.escape(text, quote=False)
