"""chaos-template-watcher: renders sidecar templates and publishes them on NATS."""
