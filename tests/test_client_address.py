"""Which client a scan counts against behind a proxy (``serve.trusted_proxies`` and
``serve.proxy_header``): a server bound to a dual-stack address, which sees an IPv4 peer as
``::ffff:a.b.c.d``; RFC 7239 ``Forwarded``; hops that carry a port."""

from __future__ import annotations

import socket

import pytest
from conftest_world import build_world
from falcon import testing

from engine.http_scan import make_client_ip

PROXY = "10.0.0.2"


def _client_ip(header: str = "X-Forwarded-For", proxies=(PROXY,)):
    ip = make_client_ip(frozenset(proxies), header)

    def client(remote: str, value: str | None = None) -> str:
        return ip(testing.create_req(remote_addr=remote, headers={header: value} if value else {}))
    return client


@pytest.mark.parametrize("configured, peer", [
    ("127.0.0.1", "::ffff:127.0.0.1"),  # a server bound to [::] or [::ffff:127.0.0.1]
    ("::ffff:127.0.0.1", "::ffff:127.0.0.1"),
    ("::ffff:127.0.0.1", "127.0.0.1"),
])
def test_a_proxy_is_trusted_whether_it_or_its_peer_is_written_ipv4_mapped(data, configured, peer):
    data.update_config(serve={"trusted_proxies": [configured], "proxy_header": "X-Forwarded-For"})
    cfg = data.serve_settings
    ip = make_client_ip(frozenset(cfg["trusted_proxies"]), cfg["proxy_header"])
    req = testing.create_req(remote_addr=peer, headers={"X-Forwarded-For": "198.51.100.1"})
    assert ip(req) == "198.51.100.1"
    # only proxies in the header: the proxy, counted as one client however it is written
    req = testing.create_req(remote_addr=peer, headers={"X-Forwarded-For": "::ffff:127.0.0.1"})
    assert ip(req) == "127.0.0.1"


def test_a_client_and_a_proxy_in_the_header_count_the_same_in_either_form():
    client = _client_ip()
    assert client(PROXY, "198.51.100.1, ::ffff:10.0.0.2") == "198.51.100.1"  # a proxy: skipped
    assert client(PROXY, "::ffff:198.51.100.1") == client(PROXY, "198.51.100.1") == "198.51.100.1"
    assert client("::ffff:203.0.113.5") == client("203.0.113.5") == "203.0.113.5"


@pytest.mark.parametrize("value, expected", [
    ("198.51.100.1:50312", "198.51.100.1"),
    ("[2001:db8::1]:443", "2001:db8::/64"),
    ("[2001:db8::1]", "2001:db8::/64"),
    ("6.6.6.6, 198.51.100.1:50312, 10.0.0.2:443", "198.51.100.1"),  # the proxy's hop: skipped
])
def test_a_hop_with_a_port_or_brackets_is_its_address(value, expected):
    assert _client_ip()(PROXY, value) == expected


@pytest.mark.parametrize("value, expected", [
    ("for=198.51.100.1;proto=https", "198.51.100.1"),
    ('for="[2001:db8::7]:443"', "2001:db8::/64"),
    ('proto=https;For="198.51.100.1:4711";by=10.0.0.2', "198.51.100.1"),
    ("for=6.6.6.6, for=198.51.100.1, for=10.0.0.2", "198.51.100.1"),  # rightmost not a proxy
    ('for=198.51.100.1, for="[::ffff:10.0.0.2]:80"', "198.51.100.1"),
])
def test_a_forwarded_header_is_read_by_its_for(value, expected):
    assert _client_ip("Forwarded")(PROXY, value) == expected


@pytest.mark.parametrize("hidden", [
    "for=unknown", "for=_hidden", 'for="_hidden:_port"', "proto=https", "for=1.2.3.4;for=5.6.7.8",
    'for="198.51.100.2',  # a quote a client opens does not swallow the hop to its right
])
def test_a_forwarded_hop_that_is_no_address_counts_as_the_proxy(hidden):
    client = _client_ip("Forwarded")
    assert client(PROXY, f"for=198.51.100.1, {hidden}") == PROXY
    assert client(PROXY, f"{hidden}, for=198.51.100.1") == "198.51.100.1"


def _dual_stack() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::ffff:127.0.0.1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _dual_stack(), reason="no IPv6 dual-stack socket here")
def test_a_dual_stack_server_bans_one_client_behind_a_proxy_not_all(tmp_path, monkeypatch):
    import server as server_module
    from cli.localserver import free_port

    w = build_world(tmp_path / "wuma-data", invalid_threshold=5,
                    serve={"trusted_proxies": ["127.0.0.1"], "proxy_header": "X-Forwarded-For"})
    good = w["data"].codes.code(w["caps"], 0, "cap_inner")
    w["data"].close()
    port = free_port()
    monkeypatch.setattr(server_module, "free_port", lambda: port)  # the last --bind wins
    s = server_module.Server(tmp_path / "wuma-data", args=("--bind", f"[::ffff:127.0.0.1]:{port}"))
    try:
        for i in range(7):  # client A enumerates codes: banned
            s.scan({"code": "1" + "Z" * 18 + str(i)}, headers={"X-Forwarded-For": "198.51.100.1"})
        assert s.scan({"code": good}, headers={"X-Forwarded-For": "198.51.100.1"})[0] == 403
        status, body = s.scan({"code": good}, headers={"X-Forwarded-For": "203.0.113.77"})
        assert (status, body.get("error") or body["verdict"]) == (200, "genuine")
    finally:
        s.stop()
