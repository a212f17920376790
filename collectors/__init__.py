"""One module per source the control plane scrapes: a pure parser beside a thin fetcher."""
