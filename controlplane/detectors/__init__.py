"""One module per finding kind; each defines `KIND` and `detect(window, cf) -> list[Finding]`
(see base.py for the contract). controlplane/detection.py finds them by listing this package."""
