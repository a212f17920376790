"""Runbook Markdown -> HTML for the dashboard, safe by construction rather than by escaping.

Runbooks are files anyone with commit access can edit, and the dashboard inserts their HTML as
is, so nothing in the source may become markup of its own. markdown-it-py is a CommonMark parser
(the old hand-written one double-escaped entities, flattened nested emphasis and split list items
with two paragraphs), run with raw HTML off, so `<script>` in a runbook is text. The only places
a URL reaches the output are the link and image render rules below, and they keep it only when
it is relative or http(s): a refused link shows as its text, a refused image as its alt text.
`link(url) -> url` may rewrite relative links (the dashboard points `other_runbook.md` at its page).
"""

from __future__ import annotations

import re
from typing import Callable

from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.renderer import RendererHTML

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")

Rewrite = Callable[[str], str]


def safe_url(url: str) -> bool:
    """http(s) URLs and relative references only."""
    url = url.strip()
    if any(ord(c) < 0x20 or c in "\\\x7f" for c in url) or url.startswith("//"):
        return False
    m = _SCHEME.match(url)
    return not m or m.group(0).lower() in ("http:", "https:")


def _link_open(self, tokens, idx, options, env):
    tok = tokens[idx]
    href = str(tok.attrGet("href") or "")
    ok = safe_url(href)
    env["links"].append(ok)             # so the matching link_close knows whether to close a tag
    if not ok:
        return ""
    if env["link"] and not _SCHEME.match(href):
        tok.attrSet("href", env["link"](href))
    return self.renderToken(tokens, idx, options, env)


def _link_close(self, tokens, idx, options, env):
    return self.renderToken(tokens, idx, options, env) if env["links"].pop() else ""


def _image(self, tokens, idx, options, env):
    if not safe_url(str(tokens[idx].attrGet("src") or "")):
        return escapeHtml(self.renderInlineAsText(tokens[idx].children or [], options, env))
    return RendererHTML.image(self, tokens, idx, options, env)


# The parser accepts every URL so that a refused link still parses as a link and the render rules
# can show its text; the default check would leave `[text](javascript:...)` as literal source.
# xhtmlOut off: the output goes into HTML5 pages (`<hr>`, not `<hr />`).
_md = MarkdownIt("commonmark", {"html": False, "xhtmlOut": False}).enable("table")
_md.validateLink = lambda url: True
_md.add_render_rule("link_open", _link_open)
_md.add_render_rule("link_close", _link_close)
_md.add_render_rule("image", _image)


def render(text: str, link: Rewrite | None = None) -> str:
    """Markdown source -> HTML (a fragment, safe to insert as is)."""
    return _md.render(text, {"link": link, "links": []})


def title(text: str) -> str | None:
    """The text of the first heading, as plain text."""
    tokens = _md.parse(text)
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            parts = [c.content if c.type in ("text", "code_inline") else " " if c.type == "softbreak" else ""
                     for c in tokens[i + 1].children or []]
            return "".join(parts).strip() or None
    return None
