"""Alerting: notifications of incident state changes to Slack, webhooks and Alertmanagers,
through a durable outbox; silences; and the receiver for Alertmanager's own alerts.
docs/alerting.md is the operator's guide."""
