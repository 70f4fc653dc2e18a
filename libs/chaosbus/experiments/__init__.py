"""Experiments: declarative IoChaos-style fault runs (spec, schedule, selection, store)."""
