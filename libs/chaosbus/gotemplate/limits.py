"""Bounds that keep a hostile template or argument from exhausting the renderer.

Templates and their arguments come from ConfigMaps that anyone with write access to a
namespace can edit, so nothing here may recurse without bound.
"""

from __future__ import annotations

# Deep nesting (of actions, parentheses or argument values) is refused rather than left
# to hit Python's recursion limit.
MAX_DEPTH = 100
# The largest printf width or precision: `%999999999d` would otherwise allocate that much.
MAX_WIDTH = 10_000
# A rendering is stored as one JetStream KV value of at most 1 MiB, so nothing useful is
# larger than this; a loop that prints more is stopped here rather than eating memory.
MAX_OUTPUT = 4 * 1024 * 1024  # characters
# Actions, blocks and loop iterations executed in one rendering. Ranges nested a few deep
# over long lists multiply; a sidecar template takes a few hundred steps, and each
# step costs microseconds, so a runaway template is stopped within about a second.
MAX_STEPS = 100_000
