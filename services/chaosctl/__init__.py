"""chaosctl: the operator's command line for chaosbus."""
