"""chaos-injector: the mutating admission webhook that injects the chaosfs sidecar."""
