"""Operations as code for teams that run Prometheus and Grafana: chatops' Grafana dashboards and
Prometheus rules, generated from Python (`python -m dashboards.generate`, `make dashboards`)."""
