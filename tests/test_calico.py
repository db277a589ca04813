"""Unit tests of the Calico BGP pieces that need no root: ExaBGP config rendering, JSON
parsing, and the route reflector's RFC 4456 rules (fed ExaBGP JSON, reading its commands)."""

from __future__ import annotations

import io
import ipaddress
import json

from knetlab.bgp.exabgp import Neighbor, SpeakerConfig, configured_neighbors, render
from knetlab.bgp.messages import parse
from knetlab.bgp.reflector import PRIME_WAIT, Reflector


def eor(peer: str) -> str:
    return json.dumps({"type": "update", "neighbor": {"address": {"peer": peer}, "message": {
        "eor": {"afi": "ipv4", "safi": "unicast"}}}})


def state(peer: str, st: str) -> str:
    return json.dumps({"type": "state", "neighbor": {"address": {"peer": peer}, "state": st}})


def update(peer: str, prefix: str, nh: str, withdraw: bool = False, **attrs: object) -> str:
    body = ({"withdraw": {"ipv4 unicast": [{"nlri": prefix}]}} if withdraw else
            {"attribute": attrs, "announce": {"ipv4 unicast": {nh: [{"nlri": prefix}]}}})
    return json.dumps({"type": "update", "neighbor": {"address": {"peer": peer},
                                                      "message": {"update": body}}})


def test_render_has_every_neighbor_and_route() -> None:
    cfg = SpeakerConfig("192.168.0.11", 64512, 3,
                        [Neighbor("192.168.0.12", "192.168.0.11")],
                        [("10.244.1.0/24", "192.168.0.11")], ["knetlab.bgp.installer"])
    text = render(cfg, python="/usr/bin/python3")
    assert "neighbor 192.168.0.12 {" in text and "hold-time 3;" in text
    assert "route 10.244.1.0/24 next-hop 192.168.0.11;" in text
    assert "run /usr/bin/python3 -m knetlab.bgp.installer;" in text


def test_parse_announce_with_reflection_attributes() -> None:
    ev = parse(update("192.168.0.254", "10.244.2.0/24", "192.168.0.12",
                      **{"originator-id": "192.168.0.12", "cluster-list": ["192.168.0.254"]}))
    assert ev and ev.announce["10.244.2.0/24"].cluster_list == ("192.168.0.254",)


def reflector() -> tuple[Reflector, io.StringIO]:
    out = io.StringIO()
    rr = Reflector("192.168.0.254", "192.168.0.254", {"192.168.0.253"}, out=out)
    for peer in ("192.168.0.11", "192.168.0.12", "192.168.0.253"):
        rr.handle(state(peer, "up"))
        rr.handle(eor(peer))
    return rr, out


def targets(line: str) -> set[str]:
    """The neighbours an API command addresses (``neighbor A , neighbor B announce ...``)."""
    head = line.split(" announce ")[0].split(" withdraw ")[0]
    return {part.split()[1] for part in head.split(" , ")}


def test_reflects_client_route_to_others_not_back() -> None:
    rr, out = reflector()
    rr.handle(update("192.168.0.11", "10.244.1.0/24", "192.168.0.11"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1  # one command for every target given the same path
    assert targets(lines[0]) == {"192.168.0.12", "192.168.0.253"}
    assert "announce route 10.244.1.0/24" in lines[0]
    assert "originator-id 192.168.0.11" in lines[0]
    assert "cluster-list [ 192.168.0.254 ]" in lines[0]


def test_non_client_route_goes_to_clients_only_and_loops_drop() -> None:
    rr, out = reflector()
    rr.handle(update("192.168.0.253", "10.244.9.0/24", "192.168.0.19",
                     **{"originator-id": "192.168.0.19", "cluster-list": ["192.168.0.253"]}))
    text = out.getvalue()
    assert "cluster-list [ 192.168.0.254 192.168.0.253 ]" in text
    out.truncate(0)
    out.seek(0)
    rr.handle(update("192.168.0.253", "10.244.8.0/24", "192.168.0.18",
                     **{"cluster-list": ["192.168.0.254"]}))  # carries our id: a loop
    assert out.getvalue() == ""


def test_withdraw_and_peer_down_and_resend_on_return() -> None:
    rr, out = reflector()
    rr.handle(update("192.168.0.11", "10.244.1.0/24", "192.168.0.11"))
    out.truncate(0)
    out.seek(0)
    rr.handle(state("192.168.0.11", "down"))
    withdrawn = [line for line in out.getvalue().splitlines()
                 if " withdraw route 10.244.1.0/24" in line]
    assert withdrawn and "192.168.0.12" in targets(withdrawn[0])
    rr.handle(update("192.168.0.11", "10.244.1.0/24", "192.168.0.11"))
    out.truncate(0)
    out.seek(0)
    rr.handle(state("192.168.0.12", "down"))
    rr.handle(state("192.168.0.12", "up"))  # ExaBGP resends its adj-rib-out: no command
    assert out.getvalue() == ""
    assert "10.244.1.0/24" in rr.sent["192.168.0.12"]


def conf(*peers: str) -> str:
    cfg = SpeakerConfig("192.168.0.254", 64512, 3,
                        [Neighbor(p, "192.168.0.254") for p in peers], [], ["x"])
    return render(cfg, python="/usr/bin/python3")


def test_configured_neighbours_are_targets_and_new_ones_primed_when_up() -> None:
    out = io.StringIO()
    rr = Reflector("192.168.0.254", "192.168.0.254", set(), out=out)
    rr.configure(configured_neighbors(conf("192.168.0.11", "192.168.0.12", "192.168.0.13",
                                           "192.168.0.15")),
                 prime={"192.168.0.11", "192.168.0.12", "192.168.0.13"})  # .15: a spare
    rr.handle(state("192.168.0.11", "up"))
    rr.handle(update("192.168.0.11", "10.244.1.0/24", "192.168.0.11"))
    lines = out.getvalue().splitlines()  # .12 and .13 are not up: ExaBGP keeps it for them
    assert len(lines) == 1 and targets(lines[0]) == {"192.168.0.12", "192.168.0.13"}
    out.truncate(0)
    out.seek(0)
    rr.configure(configured_neighbors(conf("192.168.0.11", "192.168.0.12", "192.168.0.13",
                                           "192.168.0.14", "192.168.0.15")))
    rr.handle(update("192.168.0.12", "10.244.2.0/24", "192.168.0.12"))
    assert all({"192.168.0.14", "192.168.0.15"}.isdisjoint(targets(line))
               for line in out.getvalue().splitlines())
    out.truncate(0)
    out.seek(0)
    rr.handle(state("192.168.0.14", "up"))  # a reload added it: it gets everything once
    assert out.getvalue() == ""  # its own routes are reflected first
    rr.handle(eor("192.168.0.14"))  # it has sent all it has
    assert sorted(out.getvalue().splitlines()) == [
        f"neighbor 192.168.0.14 announce route 10.244.{k}.0/24 next-hop 192.168.0.1{k} "
        f"origin igp local-preference 100 originator-id 192.168.0.1{k} "
        "cluster-list [ 192.168.0.254 ]" for k in (1, 2)]
    out.truncate(0)
    out.seek(0)
    rr.handle(state("192.168.0.15", "up"))  # a spare's node joined; it sends no EOR
    rr.waiting["192.168.0.15"] -= PRIME_WAIT  # as if PRIME_WAIT had passed
    rr.tick()
    assert len(out.getvalue().splitlines()) == 2


def test_ipip_crosssubnet_tunnels_only_off_subnet() -> None:
    from knetlab.bgp.kernel import KernelRoutes
    k = KernelRoutes("10.244.0.0/16", set(), {"192.168.1.11"}, "ipip-crosssubnet")
    k.subnets = [ipaddress.ip_network("192.168.1.0/24")]  # as read from `ip addr`
    assert k._hop("192.168.1.12") == "via 192.168.1.12"  # same rack: native
    assert k._hop("192.168.2.11") == "via 192.168.2.11 dev tunl0 onlink"  # other rack
    always = KernelRoutes("10.244.0.0/16", set(), {"192.168.1.11"}, "ipip")
    assert always._hop("192.168.1.12") == "via 192.168.1.12 dev tunl0 onlink"
