"""Actions that change the cluster. Each has plan() without side effects and an audited apply()."""
