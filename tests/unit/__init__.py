"""The unit tier: tests that run as an unprivileged user, without FUSE, NATS or network.

A package, so that a file split between the tiers keeps its name in both
(tests/test_sizes.py beside tests/unit/test_sizes.py) without the two clashing.
"""
