"""chaos-auth: the NATS auth callout that gives every chaosfs sidecar its own identity."""
