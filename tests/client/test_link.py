"""Socket-free parts of the client's Link: server address parsing and the reconnect backoff."""

from __future__ import annotations

import pytest

from geartrain.client.link import INITIAL_BACKOFF, MAX_BACKOFF, backoff_delay, parse_server, parse_servers


@pytest.mark.parametrize(
    ("spec", "address"),
    [
        ("gear.example:4731", ("gear.example", 4731)),
        ("gear.example", ("gear.example", 4730)),
        (("10.0.0.1", 7000), ("10.0.0.1", 7000)),
        ("[::1]:4731", ("::1", 4731)),
        ("[::1]", ("::1", 4730)),
        ("::1", ("::1", 4730)),
    ],
)
def test_server_specs_parse_to_host_and_port(spec, address):
    assert parse_server(spec) == address


def test_a_single_spec_is_a_list_of_one():
    assert parse_servers("h:1") == [("h", 1)]
    assert parse_servers(("h", 1)) == [("h", 1)]
    assert parse_servers(["a:1", ("b", 2)]) == [("a", 1), ("b", 2)]
    with pytest.raises(ValueError):
        parse_servers([])


def test_backoff_jitter_stays_between_half_and_all_of_the_nominal_delay():
    delay = INITIAL_BACKOFF
    for _ in range(200):
        slept = backoff_delay(delay)
        assert delay / 2 <= slept <= delay
        delay = min(delay * 2, MAX_BACKOFF)
    assert delay == MAX_BACKOFF
