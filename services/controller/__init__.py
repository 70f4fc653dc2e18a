"""chaos-controller: runs declarative experiments over the bus."""
