"""Which of the matching pods an experiment run injects, by mode, as Chaos Mesh chose them.

Chaos Mesh (v0.9 through 2.x, ``filterPodsByMode`` with ``RandomFixedIndexes``) did this,
and ``choose`` does the same with the random generator it is given:

* ``one``: one pod picked uniformly at random.
* ``all``: every pod.
* ``fixed``: ``value`` pods picked at random without repeats, or all of them when fewer
  match. A value of 0 or less was an error.
* ``fixed-percent``: ``floor(n * value / 100)`` pods picked at random. The floor is Chaos
  Mesh's: 10 percent of 5 pods is 0 pods, and such a run injects nothing. A value of 0
  or above 100 was an error.
* ``random-max-percent``: first a percentage drawn uniformly from 0 to ``value``
  (both ends included), then ``floor(n * that / 100)`` pods picked at random. So a run
  can pick no pod at all (with 60 and 5 pods, any draw below 20 picks none), and the
  count is not uniform over 0..floor(n * value / 100). A value of 0 or above 100 was an
  error.

Candidates are sorted and deduplicated first, so the same generator state picks the
same pods whatever order the caller listed them in; the result is sorted too.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

MODES = ("one", "all", "fixed", "fixed-percent", "random-max-percent")
_WHOLE = re.compile(r"-?[0-9]{1,18}")


def count_for(mode: str, value: str | None, n: int, rng: random.Random) -> int:
    """How many of ``n`` pods one run of ``mode`` injects (random-max-percent uses ``rng``)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode in ("one", "all"):
        return min(1, n) if mode == "one" else max(n, 0)
    number = _whole(mode, value)
    if mode == "fixed" and number <= 0:
        raise ValueError(f"mode fixed needs a value above 0, got {value!r}")
    if mode != "fixed" and not 0 < number <= 100:
        raise ValueError(f"mode {mode} needs a value from 1 to 100, got {value!r}")
    if n <= 0:
        return 0
    if mode == "fixed":
        return min(number, n)
    if mode == "random-max-percent":
        number = rng.randint(0, number)
    return n * number // 100


def choose(
    mode: str, value: str | None, candidates: Sequence[str], rng: random.Random
) -> list[str]:
    """The pods to inject this run, sorted; deterministic for a given ``rng`` state."""
    pool = sorted(set(candidates))
    count = count_for(mode, value, len(pool), rng)
    if mode == "one" and pool:
        return [pool[rng.randrange(len(pool))]]
    if count >= len(pool):
        return pool
    return sorted(rng.sample(pool, count))


def _whole(mode: str, value: str | None) -> int:
    text = "" if value is None else str(value).strip()
    if not _WHOLE.fullmatch(text):
        raise ValueError(f"mode {mode} needs a whole-number value, got {value!r}")
    return int(text)
