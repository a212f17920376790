"""A tiny, safe Markdown renderer for the runbooks shown on the dashboard.

It knows the Markdown the runbooks use: ATX headings, paragraphs, bullet and numbered lists
(nested by indentation), fenced and indented code blocks, block quotes, horizontal rules, pipe
tables, and inline `code`, **bold**, *emphasis* and [links](url). Everything else is text.

Safe by construction: every piece of the source is HTML-escaped before it reaches the output, raw
HTML in the source shows as text, and a link keeps its `href` only when it is relative (no scheme,
not `//host`) or http(s); any other link (javascript:, data:, mailto:...) is rendered as its text.
`link(url) -> url` may rewrite relative links (the dashboard points `other_runbook.md` at its page).
"""

from __future__ import annotations

import html
import re
from typing import Callable

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)\s*$")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HR = re.compile(r"^ {0,3}([-*_])(\s*\1){2,}\s*$")
_ITEM = re.compile(r"^( *)([-*+]|\d{1,9}[.)])\s+(.*)$")
_QUOTE = re.compile(r"^ {0,3}> ?(.*)$")
_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{1,}:?\s*(\|\s*:?-{1,}:?\s*)*\|?\s*$")
_INLINE = re.compile(
    r"(?P<code>(?P<ticks>`+)(?P<codetext>.+?)(?P=ticks))"
    r"|(?P<link>\[(?P<text>[^\]]+)\]\((?P<url>[^)\s]+)(?:\s+\"[^\"]*\")?\))"
    r"|(?P<bold>\*\*(?P<b1>.+?)\*\*|__(?P<b2>.+?)__)"
    r"|(?P<em>(?<![\w*])\*(?P<e1>[^*\s](?:[^*]*[^*\s])?)\*(?![\w*])|(?<!\w)_(?P<e2>[^_\s](?:[^_]*[^_\s])?)_(?!\w))"
    r"|(?P<auto><(?P<autourl>https?://[^\s>]+)>)")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")

Rewrite = Callable[[str], str]


def safe_url(url: str) -> bool:
    """http(s) URLs and relative references only."""
    url = url.strip()
    if any(ord(c) < 0x20 or c in "\\\x7f" for c in url) or url.startswith("//"):
        return False
    m = _SCHEME.match(url)
    return not m or m.group(0).lower() in ("http:", "https:")


def inline(text: str, link: Rewrite | None = None) -> str:
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()], quote=False))
        pos = m.end()
        if m.group("code"):
            out.append(f"<code>{html.escape(m.group('codetext').strip(), quote=False)}</code>")
        elif m.group("link"):
            inner = inline(m.group("text"), link)
            url = m.group("url")
            if safe_url(url):
                href = link(url) if link and not _SCHEME.match(url) else url
                out.append(f'<a href="{html.escape(href, quote=True)}">{inner}</a>')
            else:
                out.append(inner)
        elif m.group("bold"):
            out.append(f"<strong>{inline(m.group('b1') or m.group('b2'), link)}</strong>")
        elif m.group("em"):
            out.append(f"<em>{inline(m.group('e1') or m.group('e2'), link)}</em>")
        else:
            url = m.group("autourl")
            out.append(f'<a href="{html.escape(url, quote=True)}">{html.escape(url, quote=False)}</a>')
    out.append(html.escape(text[pos:], quote=False))
    return "".join(out)


def _cells(line: str) -> list[str]:
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    cells, cur, in_code, k = [], [], False, 0
    while k < len(s):                       # a | inside `code` or escaped as \| is not a border
        c = s[k]
        if c == "\\" and s[k + 1:k + 2] == "|":
            cur.append("|")
            k += 2
            continue
        if c == "`":
            in_code = not in_code
        if c == "|" and not in_code:
            cells.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        k += 1
    cells.append("".join(cur).strip())
    return cells


def _list(lines: list[str], i: int, link: Rewrite | None) -> tuple[str, int]:
    """A list starting at lines[i]; returns (html, index after it)."""
    first = _ITEM.match(lines[i])
    indent = len(first.group(1))
    ordered = first.group(2)[0].isdigit()
    items: list[str] = []
    while i < len(lines):
        m = _ITEM.match(lines[i])
        if not m or len(m.group(1)) != indent or m.group(2)[0].isdigit() != ordered:
            break
        parts, nested = [m.group(3).strip()], ""
        i += 1
        while i < len(lines) and lines[i].strip():
            sub = _ITEM.match(lines[i])
            if sub and len(sub.group(1)) > indent:
                block, i = _list(lines, i, link)
                nested += block
                continue
            if sub or _FENCE.match(lines[i]) or _HEADING.match(lines[i]):
                break
            parts.append(lines[i].strip())
            i += 1
        items.append(f"<li>{inline(' '.join(parts), link)}{nested}</li>")
        # a blank line between items of the same list keeps the list going
        if i + 1 < len(lines) and not lines[i].strip():
            nxt = _ITEM.match(lines[i + 1])
            if nxt and len(nxt.group(1)) == indent and nxt.group(2)[0].isdigit() == ordered:
                i += 1
    tag = "ol" if ordered else "ul"
    start = ""
    if ordered:
        n = int(first.group(2)[:-1])
        start = f' start="{n}"' if n != 1 else ""
    return f"<{tag}{start}>" + "".join(items) + f"</{tag}>", i


def render(text: str, link: Rewrite | None = None) -> str:
    """Markdown source -> HTML (a fragment, safe to insert as is)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4).split("\n")
    out: list[str] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append(f"<p>{inline(' '.join(s.strip() for s in para), link)}</p>")
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            flush()
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            flush()
            mark, lang = fence.group(1), fence.group(2)
            body = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(mark):
                body.append(lines[i])
                i += 1
            i += 1      # the closing fence (or the end of the text)
            cls = f' class="language-{html.escape(lang)}"' if lang else ""
            out.append(f"<pre><code{cls}>{html.escape(chr(10).join(body), quote=False)}</code></pre>")
            continue
        if line.startswith("    ") and not para:
            body = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i][4:])
                i += 1
            while body and not body[-1].strip():
                body.pop()
            out.append(f"<pre><code>{html.escape(chr(10).join(body), quote=False)}</code></pre>")
            continue
        heading = _HEADING.match(line)
        if heading:
            flush()
            n = len(heading.group(1))
            out.append(f"<h{n}>{inline(heading.group(2), link)}</h{n}>")
            i += 1
            continue
        if _HR.match(line):
            flush()
            out.append("<hr>")
            i += 1
            continue
        if _ITEM.match(line) and (not para or not line.startswith(" ")):
            flush()
            block, i = _list(lines, i, link)
            out.append(block)
            continue
        if _QUOTE.match(line):
            flush()
            body = []
            while i < len(lines) and _QUOTE.match(lines[i]):
                body.append(_QUOTE.match(lines[i]).group(1))
                i += 1
            out.append(f"<blockquote>{render(chr(10).join(body), link)}</blockquote>")
            continue
        if "|" in line and i + 1 < len(lines) and _TABLE_SEP.match(lines[i + 1]) and "-" in lines[i + 1]:
            flush()
            head = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                rows.append(_cells(lines[i]))
                i += 1
            th = "".join(f"<th>{inline(c, link)}</th>" for c in head)
            body = "".join("<tr>" + "".join(f"<td>{inline(c, link)}</td>" for c in r[:len(head)]) +
                           "<td></td>" * (len(head) - len(r)) + "</tr>" for r in rows)
            out.append(f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>")
            continue
        para.append(line)
        i += 1
    flush()
    return "\n".join(out)


def title(text: str) -> str | None:
    """The text of the first heading, as plain text."""
    for line in text.splitlines():
        m = _HEADING.match(line)
        if m:
            return re.sub(r"[`*_]", "", m.group(2)).strip() or None
    return None
