"""Unit tests of Docker publishing (no root): ``-p`` parsing, the allocator, the ruleset."""

from __future__ import annotations

import pytest

from knetlab.docker import rules
from knetlab.docker.ports import Allocator, Binding, PortError, PortSpec, parse_publish


@pytest.mark.parametrize("spec,want", [
    ("8080:80", [PortSpec("0.0.0.0", (8080,), 80, "tcp")]),
    ("1.2.3.4:8080:80", [PortSpec("1.2.3.4", (8080,), 80, "tcp")]),
    ("127.0.0.1::80", [PortSpec("127.0.0.1", (), 80, "tcp")]),
    ("80", [PortSpec("0.0.0.0", (), 80, "tcp")]),
    ("53:53/udp", [PortSpec("0.0.0.0", (53,), 53, "udp")]),
    ("8000-8001:9000-9001", [PortSpec("0.0.0.0", (8000,), 9000, "tcp"),
                             PortSpec("0.0.0.0", (8001,), 9001, "tcp")]),
    ("8000-8002:80", [PortSpec("0.0.0.0", (8000, 8001, 8002), 80, "tcp")]),
])
def test_parse_publish(spec: str, want: list[PortSpec]) -> None:
    assert parse_publish(spec) == want


@pytest.mark.parametrize("bad", ["8000-8002:80-81", "x:80", "80/icmp", "0:80", "1.2.3:80:80"])
def test_parse_publish_refuses(bad: str) -> None:
    with pytest.raises(PortError):
        parse_publish(bad)


def test_allocator_conflicts_and_random() -> None:
    a = Allocator((40000, 40001))
    a.commit(a.allocate(parse_publish("8080:80")), "web")
    with pytest.raises(PortError, match="Bind for 0.0.0.0:8080 failed: port is already allocated"):
        a.allocate(parse_publish("8080:80"))
    with pytest.raises(PortError, match="port is already allocated"):
        a.allocate(parse_publish("127.0.0.1:8080:80"))  # 0.0.0.0 covers every address
    assert a.allocate(parse_publish("8080:80/udp"))[0].host_port == 8080  # other protocol
    got = a.allocate(parse_publish("80") + parse_publish("81"))
    assert [b.host_port for b in got] == [40000, 40001]
    with pytest.raises(PortError):  # all or nothing: nothing was kept from the call above
        a.allocate(parse_publish("80") * 3)
    a.release("web")
    assert a.allocate(parse_publish("8080:80"))[0].host_port == 8080


def test_render_one_container_and_removal() -> None:
    br = [rules.BridgeNet("bridge", "docker0", "172.17.0.0/16")]
    pub = [rules.Published("web", "172.17.0.2", "docker0",
                           (Binding("0.0.0.0", 8080, 80, "tcp"),
                            Binding("127.0.0.1", 8081, 80, "tcp")))]
    text = rules.render(br, pub, userland_proxy=False)
    assert ('-A DOCKER -p tcp -m tcp --dport 8080 -m comment --comment "docker: web" '
            "-j DNAT --to-destination 172.17.0.2:80") in text
    assert "-A DOCKER -d 127.0.0.1/32 -p tcp -m tcp --dport 8081" in text
    assert "--src-type LOCAL" in text  # route_localnet needs the src-LOCAL MASQUERADE
    assert text.count("--dport 80 -m comment") == 2  # hairpin + filter accept, once each
    empty = rules.render(br, [], userland_proxy=True)
    assert "docker: web" not in empty and "--src-type LOCAL" not in empty
    assert "-A DOCKER ! -i docker0 -o docker0" in empty
