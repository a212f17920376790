"""The runbooks' Markdown renderer: the constructs the runbooks use, and nothing unsafe gets out."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.web.markdown import render, safe_url, title

RUNBOOKS = Path(__file__).resolve().parents[3] / "runbooks"


def test_headings_paragraphs_lists_code_and_inline():
    html = render("# Title\n\nSome **bold** and *em* and `code <x>`.\nSame paragraph.\n\n"
                  "- one\n- two\n  - nested\n- three\n  continued\n\n1. first\n2. second\n\n"
                  "```sh\nchatops inspect redis shard0\n```\n\n    indented code\n\n---\n> quoted")
    assert "<h1>Title</h1>" in html
    assert ("<p>Some <strong>bold</strong> and <em>em</em> and <code>code &lt;x&gt;</code>.\n"
            "Same paragraph.</p>") in html
    assert ("<ul>\n<li>one</li>\n<li>two\n<ul>\n<li>nested</li>\n</ul>\n</li>\n<li>three\ncontinued</li>\n"
            "</ul>") in html
    assert "<ol>\n<li>first</li>\n<li>second</li>\n</ol>" in html
    assert '<pre><code class="language-sh">chatops inspect redis shard0\n</code></pre>' in html
    assert "<pre><code>indented code\n</code></pre>" in html
    assert "<hr>" in html and "<blockquote>\n<p>quoted</p>\n</blockquote>" in html


def test_tables_keep_escaped_pipes_inside_code():
    # GFM splits cells on every unescaped `|`, inside code too; `\|` keeps one in the cell.
    html = render("| a | b |\n|---|:-:|\n| 1 | `x\\|y` |\n| 2 \\| 3 |")
    assert '<thead>\n<tr>\n<th>a</th>\n<th style="text-align:center">b</th>\n</tr>\n</thead>' in html
    assert '<td style="text-align:center"><code>x|y</code></td>' in html
    assert '<td>2 | 3</td>\n<td style="text-align:center"></td>' in html


@pytest.mark.parametrize("url,ok", [
    ("https://redis.io/commands/client-kill", True), ("http://x/y", True), ("leaked_clients.md", True),
    ("../docs/operations.md#x", True), ("/incidents", True), ("#confirm", True),
    ("javascript:alert(1)", False), ("JaVaScRiPt:alert(1)", False), ("data:text/html,x", False),
    ("mailto:a@b", False), ("//evil.example/x", False), ("vbscript:x", False), ("java\tscript:x", False),
    ("file:///etc/passwd", False),
])
def test_only_relative_and_http_links_keep_their_href(url, ok):
    assert safe_url(url) is ok
    html = render(f"[here]({url})")
    assert ("<a href=" in html) is ok and "here" in html


@pytest.mark.parametrize("source,text", [
    ("[x](javascript&#58;alert(1))", "x"),              # entity-encoded scheme
    ("[x](&#x6A;avascript:alert(1))", "x"),
    ("[x](JaVaScRiPt:alert(1))", "x"),
    ("<javascript:alert(1)>", "javascript:alert(1)"),  # autolink
    ("[x][r]\n\n[r]: data:text/html,<script>alert(1)</script>", "x"),   # reference definition
    ("![pic](data:image/png;base64,AAAA)", "pic"),      # image: its alt text only
    ("![pic](javascript:alert(1))", "pic"),
])
def test_refused_links_and_images_render_as_their_text_only(source, text):
    assert render(source) == f"<p>{text}</p>\n"


def test_safe_images_and_images_inside_links():
    assert render("![pic](img/a.png)") == '<p><img src="img/a.png" alt="pic"></p>\n'
    assert render("[![pic](data:x)](https://a.b)") == '<p><a href="https://a.b">pic</a></p>\n'


def test_everything_is_escaped():
    html = render('<script>alert(1)</script>\n\n# <img src=x onerror=alert(1)>\n\n'
                  '- [x"><script>](https://a.b/"onmouseover=")\n\n```\n</code><script>\n```\n\n'
                  '<b onclick="x">inline</b>')
    assert "<script>" not in html and "<img" not in html and "<b " not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # the quote cannot end the attribute: it is percent-encoded in the URL
    assert 'href="https://a.b/%22onmouseover=%22"' in html and '"onmouseover' not in html


def test_entities_are_escaped_once():
    """The old renderer escaped `&lt;` a second time, so the dashboard showed a literal `&lt;`."""
    html = render("`edge-<host>` and **edge-&lt;host&gt;** and edge-<host>")
    assert "&amp;" not in html
    assert html.count("edge-&lt;host&gt;") == 3
    book = render((RUNBOOKS / "ingestion_timeouts.md").read_text())
    assert "edge-&lt;host&gt;" in book and "&amp;lt;" not in book


def test_nested_emphasis():
    assert render("**bold _and italic_**") == "<p><strong>bold <em>and italic</em></strong></p>\n"
    assert render("*em **and bold***") == "<p><em>em <strong>and bold</strong></em></p>\n"


def test_list_item_with_two_paragraphs_stays_one_item():
    html = render("- first\n\n  still the first\n- second")
    assert html.count("<li>") == 2
    assert "<li>\n<p>first</p>\n<p>still the first</p>\n</li>" in html


def test_relative_links_can_be_rewritten_and_title_is_plain_text():
    html = render("See [hot](hot_shard.md) and [web](https://x.y).", lambda u: "/runbooks/" + u[:-3])
    assert '<a href="/runbooks/hot_shard">hot</a>' in html and '<a href="https://x.y">web</a>' in html
    assert title("intro\n\n# `Leaked` **clients**\n") == "Leaked clients"
    assert title("```\n# not a heading\n```\n\n# Heading &amp; more") == "Heading & more"
    assert title("no heading") is None


def test_every_runbook_renders():
    books = sorted(RUNBOOKS.glob("*.md"))
    assert books
    for path in books:
        text = path.read_text()
        html = render(text)
        assert title(text) and html.startswith("<h1>"), path.name
        assert "&amp;lt;" not in html and "<script" not in html, path.name
        if "\n|---" in text:
            assert "<table>" in html, path.name
        if "\n    " in text or "```" in text:
            assert "<pre><code" in html, path.name


def test_hostile_input_never_raises():
    for text in ("", "\n\n", "```", "- ", "|", "| a |\n|---|", "[", "**", "`", "#", "1.", "> ", "\x00\ud800",
                 "*" * 1000, "[a](" * 200, "-\n" * 500, "> " * 200 + "x", "[" * 5000, "<" * 5000):
        assert isinstance(render(text), str)
        title(text)
