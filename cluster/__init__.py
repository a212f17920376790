"""The cluster model every part of chatops reads: the cluster file (`spec`, `checks`, and the
loader `clusterfile`), the one duration grammar, the run directory and its `state.json`, and the
loopback and binary helpers. It imports nothing else of chatops, so the data plane, the
collectors and the control plane can all depend on it."""
