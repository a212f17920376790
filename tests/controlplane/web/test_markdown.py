"""The runbooks' Markdown renderer: the constructs the runbooks use, and nothing unsafe gets out."""

from __future__ import annotations

import pytest

from controlplane.web.markdown import render, safe_url, title


def test_headings_paragraphs_lists_code_and_inline():
    html = render("# Title\n\nSome **bold** and *em* and `code <x>`.\nSame paragraph.\n\n"
                  "- one\n- two\n  - nested\n- three\n  continued\n\n1. first\n2. second\n\n"
                  "```sh\nchatops inspect redis shard0\n```\n\n    indented code\n\n---\n> quoted")
    assert "<h1>Title</h1>" in html
    assert "<p>Some <strong>bold</strong> and <em>em</em> and <code>code &lt;x&gt;</code>. Same paragraph.</p>" in html
    assert "<ul><li>one</li><li>two<ul><li>nested</li></ul></li><li>three continued</li></ul>" in html
    assert "<ol><li>first</li><li>second</li></ol>" in html
    assert '<pre><code class="language-sh">chatops inspect redis shard0</code></pre>' in html
    assert "<pre><code>indented code</code></pre>" in html
    assert "<hr>" in html and "<blockquote><p>quoted</p></blockquote>" in html


def test_tables_keep_pipes_inside_code():
    html = render("| a | b |\n|---|:-:|\n| 1 | `x|y` |\n| 2 \\| 3 |")
    assert "<thead><tr><th>a</th><th>b</th></tr></thead>" in html
    assert "<td><code>x|y</code></td>" in html and "<td>2 | 3</td><td></td>" in html


@pytest.mark.parametrize("url,ok", [
    ("https://redis.io/commands/client-kill", True), ("http://x/y", True), ("leaked_clients.md", True),
    ("../docs/operations.md#x", True), ("/incidents", True), ("#confirm", True),
    ("javascript:alert(1)", False), ("JaVaScRiPt:alert(1)", False), ("data:text/html,x", False),
    ("mailto:a@b", False), ("//evil.example/x", False), ("vbscript:x", False), ("java\tscript:x", False),
])
def test_only_relative_and_http_links_keep_their_href(url, ok):
    assert safe_url(url) is ok
    html = render(f"[here]({url})")
    assert ("<a href=" in html) is ok and "here" in html


def test_everything_is_escaped():
    html = render('<script>alert(1)</script>\n\n# <img src=x onerror=alert(1)>\n\n'
                  '- [x"><script>](https://a.b/"onmouseover=")\n\n```\n</code><script>\n```')
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="https://a.b/&quot;onmouseover=&quot;"' in html


def test_relative_links_can_be_rewritten_and_title_is_plain_text():
    html = render("See [hot](hot_shard.md) and [web](https://x.y).", lambda u: "/runbooks/" + u[:-3])
    assert '<a href="/runbooks/hot_shard">hot</a>' in html and '<a href="https://x.y">web</a>' in html
    assert title("intro\n\n# `Leaked` **clients**\n") == "Leaked clients"
    assert title("no heading") is None


def test_hostile_input_never_raises():
    for text in ("", "\n\n", "```", "- ", "|", "| a |\n|---|", "[", "**", "`", "#", "1.", "> ", "\x00\ud800",
                 "*" * 1000, "[a](" * 200, "-\n" * 500):
        assert isinstance(render(text), str)
