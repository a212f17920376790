"""Render the Slack message chatops would send for an incident, and screenshot it.

The message is built by the same code the `slack` destination sends with
(controlplane/alerting/message.py, then slack.py's Block Kit from slack-sdk's models), from a
real incident in a run directory's database, turned into the JSON Slack receives
(`block.to_dict()`), and drawn as HTML in Slack's layout: header, sections with mrkdwn,
fields in two columns, buttons, context. Headless Chromium takes the screenshot
(docs/images/slack-message.png in docs/alerting.md).

    python docs/tools/slack_preview.py --run-dir .run --incident 3 [--event opened] \
        [--json out.json] [--html out.html] [--png docs/images/slack-message.png]

Only the layout is ours; Slack's own rendering differs in fonts and spacing.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cluster import clusterfile  # noqa: E402
from cluster.rundir import RunDir  # noqa: E402
from controlplane.alerting import message, slack  # noqa: E402
from controlplane.database import Database  # noqa: E402

# Drawn, not typed: the headless browser has no emoji font.
EMOJI = {code: f'<span class="dot" style="background:{colour}"></span>' for code, colour in (
    (":red_circle:", "#e01e5a"), (":large_orange_circle:", "#f2952f"), (":large_blue_circle:", "#1d9bd1"),
    (":white_check_mark:", "#2eb67d"))}

CSS = """
body { font-family: 'Lato', 'Helvetica Neue', Arial, sans-serif; background: #fff; margin: 0; padding: 16px; }
.msg { display: flex; gap: 10px; max-width: 760px; }
.avatar { width: 36px; height: 36px; border-radius: 6px; background: #4a154b; color: #fff;
          font-weight: 700; display: flex; align-items: center; justify-content: center; }
.name { font-weight: 900; font-size: 15px; } .app { background: #ddd; font-size: 10px; padding: 1px 3px;
        border-radius: 2px; margin-left: 4px; color: #555; } .time { color: #616061; font-size: 12px; margin-left: 6px; }
h1 { font-size: 18px; font-weight: 900; margin: 6px 0 8px; }
.section { font-size: 15px; line-height: 1.46; margin: 6px 0; color: #1d1c1d; }
.fields { display: grid; grid-template-columns: 1fr 1fr; gap: 6px 24px; margin-top: 6px; }
code { font-family: Monaco, Menlo, monospace; font-size: 12px; color: #e01e5a; background: #f6f6f6;
       border: 1px solid #ddd; border-radius: 3px; padding: 0 3px; }
pre { font-family: Monaco, Menlo, monospace; font-size: 12px; background: #f8f8f8; border: 1px solid #ddd;
      border-radius: 4px; padding: 8px; white-space: pre-wrap; margin: 4px 0; }
a { color: #1264a3; text-decoration: none; }
hr { border: none; border-top: 1px solid #ddd; margin: 10px 0; }
.actions { display: flex; gap: 8px; margin: 8px 0; }
.btn { border: 1px solid #bbb; border-radius: 4px; padding: 4px 12px; font-size: 13px; font-weight: 700; color: #1d1c1d; }
.btn.primary { background: #007a5a; border-color: #007a5a; color: #fff; }
.context { font-size: 12px; color: #616061; }
.dot { display: inline-block; width: 12px; height: 12px; border-radius: 50%; vertical-align: -1px; }
"""


def mrkdwn(text: str) -> str:
    """Slack's mrkdwn subset the message uses, as HTML: ```pre```, `code`, *bold*, _italic_,
    <url|label>, emoji codes. The text is already escaped for Slack (&amp; &lt; &gt;)."""
    parts = re.split(r"(```.*?```)", text, flags=re.S)
    out = []
    for part in parts:
        if part.startswith("```") and part.endswith("```"):
            out.append(f"<pre>{part[3:-3]}</pre>")
            continue
        part = re.sub(r"<(https?://[^|>]+)\|([^>]+)>", r'<a href="\1">\2</a>', part)
        part = re.sub(r"`([^`]+)`", r"<code>\1</code>", part)
        part = re.sub(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])", r"<b>\1</b>", part)
        part = re.sub(r"(?<![\w_])_([^_\n]+)_(?![\w_])", r"<i>\1</i>", part)
        for code, char in EMOJI.items():
            part = part.replace(code, char)
        out.append(part.replace("\n", "<br>"))
    return "".join(out)


def render(body: dict) -> str:
    """The HTML of one webhook body ({"text", "blocks"} as Slack receives it)."""
    rows = []
    for b in body["blocks"]:
        kind = b["type"]
        if kind == "header":
            rows.append(f"<h1>{html.escape(b['text']['text'])}</h1>")
        elif kind == "section":
            inner = f"<div>{mrkdwn(b['text']['text'])}</div>" if b.get("text") else ""
            if b.get("fields"):
                inner += '<div class="fields">' + "".join(f"<div>{mrkdwn(f['text'])}</div>" for f in b["fields"]) + "</div>"
            rows.append(f'<div class="section">{inner}</div>')
        elif kind == "divider":
            rows.append("<hr>")
        elif kind == "actions":
            rows.append('<div class="actions">' + "".join(
                f'<span class="btn {e.get("style", "")}">{html.escape(e["text"]["text"])}</span>'
                for e in b["elements"]) + "</div>")
        elif kind == "context":
            rows.append('<div class="context">' + " ".join(mrkdwn(e["text"]) for e in b["elements"]) + "</div>")
    return (f"<!doctype html><meta charset=utf-8><style>{CSS}</style><div class=msg><div class=avatar>co</div>"
            f"<div><span class=name>chatops</span><span class=app>APP</span><span class=time>2:56 PM</span>"
            + "".join(rows) + "</div></div>")


def screenshot(page: Path, png: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=820,3000",
                "--hide-scrollbars"):
        opts.add_argument(arg)
    opts.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(page.resolve().as_uri())
        driver.find_element("css selector", ".msg").screenshot(str(png))
    finally:
        driver.quit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default=".run")
    ap.add_argument("--config", default=None, help="the cluster file (default: the running cluster's)")
    ap.add_argument("--incident", type=int, required=True)
    ap.add_argument("--event", default="opened", choices=message.EVENTS)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--html", type=Path)
    ap.add_argument("--png", type=Path)
    args = ap.parse_args()
    run = RunDir.resolve(args.run_dir)
    cf = clusterfile.load(args.config).spec
    with Database(run.database) as db:
        inc = db.incident(args.incident)
        findings = db.incident_findings(args.incident)
    note = message.build(inc, findings, args.event, cf, key=message.dedup_key(args.incident, args.event))
    body = {"text": slack.text(note), "blocks": [b.to_dict() for b in slack.blocks(note)]}
    page = render(body)
    if args.json:
        args.json.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n")
    if args.html:
        args.html.write_text(page)
    if args.png:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "slack.html"
            path.write_text(page)
            screenshot(path, args.png)
    if not (args.json or args.html or args.png):
        print(json.dumps(body, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
