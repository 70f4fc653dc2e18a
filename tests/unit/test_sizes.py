"""Sizes as Kubernetes writes them (128Mi, 64k, 1G, 1e6) and as chaosbus always took
them (64KiB, 1MB): the parser on its own. Where sizes are read (chaosfs's
-lazy-max-bytes, chaosctl's rule flags, the services' --audit-max-bytes) is tested
with the real commands in tests/test_sizes.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chaosbus.sizes import MAX_SIZE, parse_size

KI, MI, GI = 1 << 10, 1 << 20, 1 << 30

ACCEPTED = {
    "0": 0,
    "512": 512,
    "+512": 512,
    "512B": 512,
    # Kubernetes binary suffixes
    "1Ki": KI,
    "128Mi": 128 * MI,
    "2Gi": 2 * GI,
    "1Ti": 1 << 40,
    "1Pi": 1 << 50,
    "1Ei": 1 << 60,
    # Kubernetes decimal suffixes: k is 1000, as in Kubernetes
    "4k": 4000,
    "1M": 10**6,
    "1G": 10**9,
    "1T": 10**12,
    "1P": 10**15,
    "1E": 10**18,
    # Kubernetes exponents and thousandths, when they make whole bytes
    "1e6": 10**6,
    "5E3": 5000,
    "12e+2": 1200,
    "1000e-3": 1,
    "2000m": 2,
    # fractions that are whole bytes
    "1.5Ki": 1536,
    ".5Mi": 512 * KI,
    "2.": 2,
    "0.5k": 500,
    # the spellings chaosbus always took, any case
    "64KiB": 64 * KI,
    "128MiB": 128 * MI,
    "1gib": GI,
    "1TIB": 1 << 40,
    "1KB": 1000,
    "1kB": 1000,
    "1mb": 10**6,
    "1GB": 10**9,
    "1 MiB": MI,
    " 4096 ": 4096,
    "7Ei": 7 << 60,
}

REFUSED = {
    "": "invalid size",
    "Mi": "invalid size",
    "-1": "negative",
    "-1Ki": "negative",
    "nan": "invalid size",
    "NaN": "invalid size",
    "inf": "invalid size",
    "-inf": "invalid size",
    "0x10": "invalid size",
    "1,5Ki": "invalid size",
    "1_000": "invalid size",
    "١٢": "invalid size",  # digits, but not ASCII ones
    "0.5": "0.5 bytes, not a whole number",
    "0.1Mi": "104857.6 bytes, not a whole number",
    "64m": "0.064 bytes, not a whole number (m means thousandths",
    "1e-1": "not a whole number",
    "4K": "write k (1000) or Ki (1024)",
    "1g": "write G (1000**3) or Gi (1024**3)",
    "1t": "write T",
    "1p": "write P",
    "1e": "write E",
    "1Kb2": "invalid size",
    "1 Mi B": "invalid size",
    "1Mo": "unknown suffix 'Mo'",
    "1ki": "unknown suffix 'ki'",  # Kubernetes' Ki is case-sensitive; KiB is not
    "8Ei": "out of range",
    "1e19": "out of range",
    "1e999999999": "out of range",
}


@pytest.mark.parametrize(("text", "value"), ACCEPTED.items())
def test_accepted(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(("text", "why"), REFUSED.items())
def test_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(text)
    assert why in str(info.value)
    assert repr(text.strip()) in str(info.value) or repr(text) in str(info.value)


SUFFIXES = {
    "": 1,
    "Ki": KI,
    "Mi": MI,
    "Gi": GI,
    "k": 1000,
    "M": 10**6,
    "G": 10**9,
    "KiB": KI,
    "MiB": MI,
    "kB": 1000,
    "MB": 10**6,
}


@given(st.integers(0, 1 << 32), st.sampled_from(sorted(SUFFIXES)))
def test_every_whole_number_with_every_suffix(n: int, suffix: str) -> None:
    assert parse_size(f"{n}{suffix}") == n * SUFFIXES[suffix]


@given(st.integers(0, MAX_SIZE))
def test_plain_numbers_and_exponents_round_trip(n: int) -> None:
    assert parse_size(str(n)) == n
    digits = str(n).rstrip("0") or "0"
    zeros = len(str(n)) - len(digits)
    assert parse_size(f"{digits}e{zeros}") == n
