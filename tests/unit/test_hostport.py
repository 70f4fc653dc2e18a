"""Listening addresses: one reading of HOST:PORT for every service."""

from __future__ import annotations

import argparse

import pytest

from chaosbus.hostport import hostport_arg, parse_hostport
from chaosbus.metrics import parse_addr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9090", ("127.0.0.1", 9090)),
        (":9443", ("0.0.0.0", 9443)),
        ("[::1]:9090", ("::1", 9090)),
        ("[::]:0", ("::", 0)),
        ("nats.chaos-mesh.svc:4222", ("nats.chaos-mesh.svc", 4222)),
        (" localhost:80 ", ("localhost", 80)),
    ],
)
def test_addresses_read_as_urls_write_them(text, expected):
    assert parse_hostport(text) == expected
    assert parse_addr(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("9090", "HOST:PORT"),
        ("host:", "HOST:PORT"),
        ("host:http", "HOST:PORT"),
        ("host:65536", "from 0 to 65535"),
        ("host:-1", "HOST:PORT"),
        ("host:٣", "HOST:PORT"),  # a digit to str.isdigit, not to a port
        ("::1:9090", "in brackets"),
        ("[::1:9090", "unclosed"),
        ("a b:1", "not a host"),
        ("h:99999999999999999999", "HOST:PORT"),
    ],
)
def test_malformed_addresses_are_refused_with_the_reason(text, reason):
    with pytest.raises(ValueError) as info:
        parse_hostport(text, what="--listen")
    assert reason in str(info.value) and str(info.value).startswith("--listen")


def test_a_flag_with_a_bad_address_stops_argparse_with_the_reason(capsys):
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--metrics-addr", type=hostport_arg)
    with pytest.raises(SystemExit) as exited:
        p.parse_args(["--metrics-addr", "::1:9090"])
    assert exited.value.code == 2
    assert "in brackets" in capsys.readouterr().err
