"""The runbook Markdown renderer (controlplane/web/markdown.py), whose output the dashboard inserts
as is: for any source, the HTML has no script element, no URL with a scheme other than http(s) in
an href or src, and only the tags and attributes Markdown itself makes (an attribute value that
broke out of its quotes would show up as an attribute of its own)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from hypothesis import given
from hypothesis import strategies as st

from controlplane.web.markdown import render, title
from tests.fuzz.cases import counted

PIECES = ["[", "]", "(", ")", "](", "![", "<", ">", "<script>", "</script>", "javascript:", "JaVaScRiPt:",
          "java\tscript:", " javascript:", "&#106;avascript:", "&#x6A;", "&colon;", "vbscript:", "data:text/html,",
          "http://x.test/a", "https://x.test/", "//evil.test", "/rel", "a.md", "./b.md", "mailto:a@b", '"', "'",
          "`", "```", "*", "_", "#", "# ", "\n", "\n\n", " ", "  ", "\t", "|", "| a | b |\n|---|---|\n", "---",
          "> ", "- ", "1. ", "\\", "&", ";", "=", " onerror=", " title=", "%0a", "%22", "\x00", "\x7f", "é",
          "<a href=", "<img src=x onerror=alert(1)>", "[x]: javascript:alert(1)\n", "[x][x]", "<http://a>",
          "<javascript:alert(1)>"]
sources = st.lists(st.sampled_from(PIECES) | st.text(max_size=5), max_size=40).map("".join)

TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "a", "img", "code", "pre", "em", "strong",
        "blockquote", "hr", "br", "table", "thead", "tbody", "tr", "th", "td"}
ATTRS = {"href", "src", "alt", "title", "start", "style", "class"}
SCHEME = re.compile(r"^([a-z][a-z0-9+.\-]*):", re.I)


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, attrs))


def _link(url: str) -> str:
    return "/runbooks/" + url[:-3] if url.endswith(".md") else url


@given(sources, st.booleans())
@counted
def test_rendered_runbooks_carry_no_script_and_no_foreign_url(source, rewrite):
    out = render(source, _link if rewrite else None)
    assert not re.search(r"<\s*/?\s*script", out, re.I)
    parser = _Tags()
    parser.feed(out)
    parser.close()
    for tag, attrs in parser.found:
        assert tag in TAGS, (tag, out)
        for name, value in attrs:
            assert name in ATTRS, (name, out)
            if name in ("href", "src"):
                # As a browser reads it: entities decoded (the parser did), then ASCII whitespace
                # and control characters dropped before the scheme is looked at.
                url = re.sub(r"[\x00-\x20\x7f]", "", value or "")
                m = SCHEME.match(url)
                assert not m or m.group(1).lower() in ("http", "https"), (value, out)
                assert not url.startswith("//") and "\\" not in url[:2], (value, out)
            if name == "style":
                assert re.fullmatch(r"text-align:(left|right|center)", value or ""), (value, out)
    title(source)
