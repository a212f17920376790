"""Slack, through an incoming webhook: slack-sdk's `WebhookClient`, with the message built from
the SDK's Block Kit models (never hand-made block JSON) and a plain-text fallback.

The webhook URL is the secret (its path carries the token): it comes only from the variable
`url_env` names. The SDK's own retry handlers are off (the outbox retries, with its backoff and
order), and its logger is muted (at DEBUG it would print the URL).

Slack's answers: 2xx delivered; 429 retried after Retry-After; 5xx, a timeout or a connection
error retried; any other 4xx (`invalid_payload`, `no_service`, `channel_is_archived`...)
rejected, with Slack's body as the error.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from slack_sdk.errors import SlackRequestError
from slack_sdk.models.blocks import (
    ActionsBlock,
    ButtonElement,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    SectionBlock,
)
from slack_sdk.webhook import WebhookClient

from controlplane.alerting.destination import (
    NETWORK_ERRORS,
    REJECTED,
    Destination,
    Result,
    classify,
)
from controlplane.alerting.message import WORDS, headline

_sdk_log = logging.getLogger("chatops.alerting.slack_sdk")
_sdk_log.setLevel(logging.CRITICAL + 10)
_sdk_log.propagate = False
_sdk_log.addHandler(logging.NullHandler())

ICON = {"critical": ":red_circle:", "warning": ":large_orange_circle:", "info": ":large_blue_circle:"}
RESOLVED_ICON = ":white_check_mark:"
MAX_SECTION = 2900          # Slack refuses section text over 3000 characters
MAX_HEADER = 150


def esc(text: Any) -> str:
    """Text safe inside mrkdwn: Slack reads &, < and > as markup."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, n: int = MAX_SECTION) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def blocks(m: dict) -> list:
    """The Block Kit message for one notification (message.build's dict)."""
    event, sev = m.get("event"), m.get("severity") or "warning"
    icon = RESOLVED_ICON if event == "resolved" else ICON.get(sev, "")
    header = f"{WORDS.get(event, event)}: {m.get('title')}"
    out: list = [HeaderBlock(text=_cut(header, MAX_HEADER))]
    facts = [f"{icon} *{esc(sev.upper())}*", f"*State:* {esc(m.get('state'))}",
             f"*Incident:* <{m['links']['incident']}|#{m['incident_id']}>"]
    if m.get("clusters"):
        facts.append(f"*Clusters:* {esc(', '.join(m['clusters']))}")
    if m.get("acknowledged_by") and m.get("state") == "acknowledged":
        facts.append(f"*Acknowledged by:* {esc(m['acknowledged_by'])}")
    f = m.get("findings") or {}
    facts.append(f"*Findings:* {f.get('open', 0)} open of {f.get('total', 0)}")
    out.append(SectionBlock(text=MarkdownTextObject(text=_cut("   ".join(facts)))))

    chain = m.get("chain") or []
    if chain:
        lines = [f"{i}. *{esc(x['label'])}*: {esc(x['title'])}" + (f" _({esc(x['because'])})_" if x.get("because") else "")
                 for i, x in enumerate(chain, 1)]
        text = "*Root-cause chain*\n" + "\n".join(lines)
        if m.get("cause"):
            text += f"\n*Root cause:* {esc(m['cause'])}"
        out.append(SectionBlock(text=MarkdownTextObject(text=_cut(text))))
    figs = m.get("figures") or []
    if figs:
        out.append(SectionBlock(
            text=MarkdownTextObject(text="*Evidence*"),
            fields=[MarkdownTextObject(text=_cut(f"*{esc(x['name'])}*\n{esc(x['text'])}", 1900)) for x in figs[:10]]))
    if m.get("example_line"):
        line = str(m["example_line"]).replace("```", "'''")
        out.append(SectionBlock(text=MarkdownTextObject(text=_cut(f"*Example log line*\n```{line}```"))))
    if m.get("plan"):
        p = m["plan"]
        out.append(SectionBlock(text=MarkdownTextObject(
            text=_cut(f"*Suggested plan:* `{esc(p['action'])}`: {esc(p.get('summary') or '')}"))))
    out.append(DividerBlock())
    buttons = [ButtonElement(text="Open the incident", url=m["links"]["incident"], action_id="incident",
                             style="primary")]
    if m["links"].get("runbook"):
        buttons.append(ButtonElement(text="Runbook", url=m["links"]["runbook"], action_id="runbook"))
    out.append(ActionsBlock(elements=buttons))
    out.append(ContextBlock(elements=[MarkdownTextObject(text=f"chatops · {esc(m.get('dedup_key'))}")]))
    return out


def text(m: dict) -> str:
    """The plain fallback (notifications, clients without Block Kit)."""
    parts = [headline(m)]
    if m.get("summary"):
        parts.append(m["summary"])
    if m.get("plan"):
        parts.append(f"Plan: {m['plan']['action']}: {m['plan'].get('summary') or ''}")
    parts.append(m["links"]["incident"])
    return "\n".join(parts)


class Slack(Destination):
    type = "slack"
    schema: ClassVar[dict[str, Any]] = {"url_env": "the incoming webhook's URL (https://hooks.slack.com/services/...): a secret",
              "secret_env": None}

    def __init__(self, spec, url: str, secret: str | None = None, timeout: float = 10.0):
        super().__init__(spec, url, secret, timeout)
        self.client = WebhookClient(url, timeout=timeout, retry_handlers=[], logger=_sdk_log)  # type: ignore[arg-type]

    def send(self, payload: dict) -> Result:
        try:
            resp = self.client.send(text=text(payload), blocks=blocks(payload), unfurl_links=False)
        except SlackRequestError as exc:          # the SDK refused the request itself: no retry fixes it
            return Result(REJECTED, None, self.scrub(f"SlackRequestError: {exc}"))
        except NETWORK_ERRORS as exc:
            return self.failed(exc)
        return classify(resp.status_code, resp.body, dict(resp.headers or {}), self)
