"""Resharding: the live slot map, slot migration between shards, and the load-aware planner.

`slotmap` keeps and publishes the versioned map, `migrate` moves slots with their keys under live
traffic, `planner` chooses which slots to move from the measured per-slot load, and `loads` measures
it. The remediation actions (reshard, add_shard, remove_shard, relocate_shard) are built on these.
"""
