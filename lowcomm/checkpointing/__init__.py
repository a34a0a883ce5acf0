"""A run's state on disk: checkpoints with their SHA-256 manifests, the DCP-sharded state of worker
groups, storage domains (nodes without a shared filesystem) and the random number generators' state."""
