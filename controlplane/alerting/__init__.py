"""Alerting: notifications of incident state changes to Slack, webhooks and Alertmanagers,
through a durable outbox; silences; and the receiver for Alertmanager's own alerts.
docs/alerting.md is the operator's guide.

The stages, one module each: message.py (the destination-neutral notification), pipeline.py
(route -> silence -> group/dedup: what is due now), notifier.py (the outbox: writing, delivering,
retrying), and one module per destination type (slack.py, webhook.py, alertmanager.py), listed
in TYPES below.
"""

from __future__ import annotations

from controlplane.alerting.alertmanager import Alertmanager
from controlplane.alerting.destination import Destination
from controlplane.alerting.slack import Slack
from controlplane.alerting.webhook import Webhook

# The destination types a cluster file's `alerts[].type` names; adding one is adding a module here.
TYPES: dict[str, type[Destination]] = {"slack": Slack, "webhook": Webhook, "alertmanager": Alertmanager}


def init_app(app):
    """The notifier, in the control plane process that runs the scrape schedule (one process
    delivers, however many serve); with SCHEDULER False nothing is started. Returns it, or None."""
    import atexit

    from controlplane import scheduler
    from controlplane.alerting.notifier import Notifier
    if not app.config.get("SCHEDULER", True) or not app.config["CLUSTER"].alerts:
        return None
    notifier = Notifier(app.extensions["chatops.db"], app.config["CLUSTER"])
    app.extensions["chatops.notifier"] = notifier
    notifier.start(wait_for=scheduler.running_here(app))
    atexit.register(notifier.stop)
    return notifier
