"""The chatops control plane, in rooms: `web/` (the Flask app), `sources/` (scrape targets to
figures), `detectors/`, `incidents`, `remediation/`, `haproxy/` (config rendering), `local/` (the
supervisor behind `chatops up`), `cli/`, and the scheduler, store, database, audit and metrics
beside them. docs/architecture.md walks through it."""
