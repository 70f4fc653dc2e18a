"""chaosfs: a FUSE passthrough of an application's data directory that injects faults."""
