"""The course's ranking of data planes, tested against the measured one, the mechanism
behind each deviation, and one published benchmark on real hardware to set beside it.

Course ranking (CPU cost at the same bandwidth):
host < calico-bgp < calico-ipip = flannel-vxlan = docker-vxlan < flannel-udp < weave-udp.
A claim ``a < b`` holds when a's worst repeat beats b's best; "holds, within noise" when
only the medians are in order; an equality holds when the medians are within 25 % or the
ranges overlap.
"""

from __future__ import annotations

from typing import Any

ON = "offloads on"
TIERS = [["host"], ["calico-bgp"], ["calico-ipip", "flannel-vxlan", "docker-vxlan"],
         ["flannel-udp"], ["weave-sleeve"]]
EQUAL_WITHIN = 1.25

Summary = dict[tuple[str, str, str, int], dict[str, Any]]


def _desc(summary: Summary, plane: str, metric: str, by_plane: dict[str, dict[str, Any]]) -> str:
    row = summary.get((plane, ON, metric, 0))
    if row is None:
        st = by_plane.get(plane)
        return f"{plane}: {st['status'] if st else 'not in this run'}"
    return f"{plane} {row['median']:.2f} ({row['min']:.2f}–{row['max']:.2f})"


def _less(a: dict[str, Any], b: dict[str, Any]) -> str:
    if a["max"] < b["min"]:
        return "holds"
    if a["median"] < b["median"]:
        return "holds, within noise (ranges overlap)"
    return f"does not hold ({b['median'] / a['median']:.2f}× of the left side)"


def _equal(a: dict[str, Any], b: dict[str, Any]) -> str:
    hi, lo = max(a["median"], b["median"]), min(a["median"], b["median"])
    overlap = a["min"] <= b["max"] and b["min"] <= a["max"]
    if overlap or (lo > 0 and hi / lo <= EQUAL_WITHIN):
        return "holds" + (" (ranges overlap)" if overlap else f" (within {hi / lo:.2f}×)")
    return f"does not hold ({hi / lo:.2f}× apart)"


def course_pairs(summary: Summary, by_plane: dict[str, dict[str, Any]],
                 metric: str) -> list[tuple[str, str, str, str]]:
    """(claim, left figure, right figure, verdict) for every adjacent pair of the ranking
    and every pair inside the equal tier."""
    claims: list[tuple[str, str, str]] = []
    for tier in TIERS:
        claims += [(a, "=", b) for i, a in enumerate(tier) for b in tier[i + 1:]]
    for lower, upper in zip(TIERS, TIERS[1:], strict=False):
        claims += [(a, "<", b) for a in lower for b in upper]
    out = []
    for a, op, b in claims:
        ra, rb = summary.get((a, ON, metric, 0)), summary.get((b, ON, metric, 0))
        if ra is None or rb is None:
            missing = a if ra is None else b
            st = by_plane.get(missing)
            verdict = (f"cannot test: {missing} {st['status']}" if st
                       else f"cannot test: {missing} not in this run")
        else:
            verdict = _less(ra, rb) if op == "<" else _equal(ra, rb)
        out.append((f"{a} {op} {b}", _desc(summary, a, metric, by_plane),
                    _desc(summary, b, metric, by_plane), verdict))
    return out


# The mechanism of each plane as built here, where it differs from the course's setting
# (real NICs, kernel OVS, Go/C daemons): printed for the planes this run measured.
MECHANISMS = {
    "host": "the baseline: veth + Linux bridge + veth between two namespaces; no NIC, so "
            "the 'wire' is a memory copy and TSO/GRO are software (GSO on veth). Every "
            "plane's cost is measured on top of this, which is much cheaper per byte than "
            "a real NIC's interrupts and DMA, so overheads show up larger in ratio.",
    "calico-bgp": "routed like host-gw (no encapsulation); the extra cost over host is one "
                  "more veth hop and two routing lookups per packet (pod veth -> node -> "
                  "underlay -> node -> pod veth), the same as the course's setting.",
    "calico-ipip": "not measurable: this kernel has no IPIP device (CONFIG_NET_IPIP off); "
                   "the course's claim about it cannot be tested here.",
    "flannel-vxlan": "kernel VXLAN over a veth underlay: the encapsulation is a few header "
                     "writes and one more device traversal; with GSO the VXLAN device "
                     "segments after encapsulation in software, so on this machine the "
                     "course's '55 % of bare metal' gap (attributed to NIC offloads that "
                     "cannot see inside the tunnel) mostly does not apply: there is no NIC "
                     "whose offloads could be lost. The offloads-off table shows what "
                     "segmenting in the stack costs instead.",
    "docker-vxlan": "the same kernel VXLAN mechanism as flannel-vxlan, but with learning "
                    "and flooding (dockerd's overlay) and a bridge per network; expected "
                    "equal to flannel-vxlan within noise.",
    "calico-vxlan": "kernel VXLAN like flannel-vxlan, routed /32s instead of a bridge.",
    "flannel-udp": "a userspace forwarder reads every packet from a TUN device and writes "
                   "it to a UDP socket (and back): two copies and two syscalls per packet "
                   "per side. Here the forwarder is Python, not flannel's C/Go, so its "
                   "per-packet cost is several times the original's: the plane ranks as "
                   "the course says but with a much wider gap.",
    "weave-sleeve": "weave's sleeve: Ethernet frames from the weave bridge to a userspace "
                    "router and on in UDP, pods at weave's own MTU 1376. The router here "
                    "is Python, but its TAP port uses a virtio-net header with TSO "
                    "(knetlab/overlays/weave/sleeve.py), so the bridge hands it TCP "
                    "segments of up to 64 KB: one read and one send move ~40 frames' worth. "
                    "Real weave's sleeve captures frame by frame (pcap), which is why the "
                    "course puts it last; here flannel-udp, one 1472-byte packet per "
                    "syscall, pays more per GB. The deviation is the implementation's "
                    "batching, not the encapsulation.",
    "weave-encrypted": "the sleeve plus NaCl secretbox per datagram (PyNaCl/libsodium): "
                       "crypto on top of the per-frame userspace cost.",
    "ovs-vxlan": "Open vSwitch with the userspace datapath (no openvswitch kernel module "
                 "here): every packet is read from an AF_PACKET socket by ovs-vswitchd, "
                 "matched, encapsulated and written back, so OVS costs like a userspace "
                 "forwarder here; with the kernel datapath (the course's setting) it would "
                 "cost like kernel VXLAN.",
    "ovs-vxlan-afxdp": "ovs-vxlan with AF_XDP sockets instead of AF_PACKET on the veths "
                       "(XDP redirects frames into a shared ring: no socket-buffer "
                       "allocation and copy per packet); the difference to ovs-vxlan is "
                       "the share of OVS's cost that is the userspace datapath's I/O. "
                       "AF_XDP ports are polled by PMD threads that busy-spin a core each "
                       "by default; here they may sleep up to 1 ms when idle "
                       "(other_config:pmd-maxsleep), which keeps the idle lab near zero "
                       "CPU but adds up to a millisecond per hop to round trips.",
    "ovs-gre": "as ovs-vxlan (userspace datapath), GRE encapsulation done by OVS "
               "itself; this kernel has no GRE device either.",
    "host-gw": "kernel routes via the peer node: the host path plus a veth hop and the "
               "cni0 bridge per side (with br_netfilter, so every frame crossing the "
               "bridge also walks iptables), no encapsulation; calico-bgp routes pods "
               "without a bridge, which is why it can cost less than host-gw here.",
    "vpc-routes": "as host-gw, plus one more routing hop through the VPC router's "
                  "namespace (two more veth crossings per packet).",
    "macvlan": "the pod's eth0 is a macvlan of the node's uplink: no veth, no bridge, no "
               "routing in the node; expected at or below host cost.",
}


def explanations(summary: Summary, by_plane: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    return [(p, MECHANISMS.get(p, "")) for p in by_plane
            if by_plane[p]["status"] in ("measured", "not measurable") and p in MECHANISMS]


def published() -> list[str]:
    return [
        "## Beside a published benchmark on real hardware", "",
        "Alexis Ducastel, \"Benchmark results of Kubernetes network plugins (CNI) over "
        "10Gbit/s network (Updated: August 2020)\", ITNEXT, 8 Sep 2020, "
        "https://itnext.io/benchmark-results-of-kubernetes-network-plugins-cni-over-10gbit-"
        "s-network-updated-august-2020-6e1b757b9e49 (earlier runs: November 2018, April "
        "2019; a 40 Gbit/s run in 2024). The 2020 run: Kubernetes 1.19 on Ubuntu 18.04, "
        "pod-to-pod and pod-to-Service, TCP and UDP, with the CPU and memory each test "
        "consumed, measured with the author's `knb` tool "
        "(github.com/InfraBuilder/k8s-bench-suite); the hardware, as the 2018 article "
        "describes it: bare-metal Supermicro servers on a 10 Gbit/s switch, jumbo frames "
        "(MTU 9000), server and client pods pinned to two different nodes.", "",
        "What carries over, and what does not:", "",
        "- There, a 10 Gbit/s link caps throughput, and the article gives a whole section "
        "to setting each CNI's MTU for the jumbo frames; planes are then told apart mostly "
        "by the CPU and memory they burn per test. Here there is no link cap (veths run at "
        "memory speed) and no NIC, so full-speed throughput mostly measures how the two "
        "cores are shared, and the CPU at a fixed rate is the figure to compare.",
        "- The 2019 run calls flannel \"one of the fastest and leanest\" and shows "
        "encryption as the expensive option. Here, read the kernel planes at 1 Gbit/s "
        "(within a small factor of the host) beside the userspace planes at 50 Mbit/s "
        "(several times the host); the cost of encryption alone is weave-encrypted over "
        "weave-sleeve.",
        "- On a real kernel weave's default data path is fastdp (the OVS kernel datapath) "
        "and OVS runs in the kernel; here weave is always the sleeve and OVS always the "
        "userspace datapath, so those rows cost far more than they would on real hardware. "
        "flannel-udp was not part of that benchmark.", ""]
