"""BIRD 2 as a route reflector: ``rr client`` towards every node, dynamic neighbours.

Nodes connect to it (``passive on``: it never dials, so any node in ``neighbor range``
may join without a config change); it reflects only BGP routes (``source = RTS_BGP``) and
installs nothing (no kernel protocol). ``error wait time 1,2`` lets a restarted peer back
in quickly. Status and routes come from ``birdc`` on its control socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from knetlab import shell
from knetlab.daemon import Daemon

if TYPE_CHECKING:
    from knetlab.rundir import RunDir

TEMPLATE = """\
# knetlab: BIRD route reflector {name}
router id {router_id};
log "{log}" all;
protocol device {{ }}
{static_peers}
protocol bgp clients {{
    description "route reflector clients";
    local {local} as {asn};
    neighbor range {range} internal;
    dynamic name "client";
    passive on;
    rr client;
    rr cluster id {cluster_id};
    hold time {hold};
    connect retry time 1;
    error wait time 1,2;
    ipv4 {{ import all; export where source = RTS_BGP; next hop keep; }};
}}
"""

PEER = """\
protocol bgp rr_{n} {{
    description "route reflector";
    local {local} as {asn};
    neighbor {address} internal;
    hold time {hold};
    connect retry time 1;
    error wait time 1,2;
    ipv4 {{ import all; export where source = RTS_BGP; next hop keep; }};
}}
"""


@dataclass
class BirdConfig:
    router_id: str
    cluster_id: str
    asn: int
    hold_time: int
    client_range: str
    peers: list[str]  # other reflectors (non-clients)


class Bird(Daemon):
    name = "bird"

    def __init__(self, rundir: RunDir, owner: str, netns: str | None, cfg: BirdConfig) -> None:
        super().__init__(rundir, owner, netns)
        self.cfg = cfg
        self.socket = self.dir / "bird.ctl"

    def render_config(self) -> str:
        c = self.cfg
        peers = "".join(PEER.format(n=i, local=c.router_id, asn=c.asn, address=a,
                                    hold=c.hold_time) for i, a in enumerate(c.peers, 1))
        return TEMPLATE.format(name=self.owner, router_id=c.router_id, log=self.log_file,
                               static_peers=peers, local=c.router_id, asn=c.asn,
                               range=c.client_range, cluster_id=c.cluster_id, hold=c.hold_time)

    def validate_command(self) -> list[str]:
        return ["bird", "-p", "-c", str(self.config_file)]

    def command(self) -> list[str]:
        return ["bird", "-f", "-c", str(self.config_file), "-s", str(self.socket)]

    def is_ready(self) -> bool:
        return self.socket.exists()

    def birdc(self, *args: str) -> str:
        return shell.run(["birdc", "-s", str(self.socket), *args],
                         context=f"birdc on {self.owner}").stdout


CLIENT = """\
# knetlab: BIRD as a route reflector client {name}
router id {router_id};
log "{log}" all;
protocol device {{ }}
protocol static {{ ipv4; {statics} }}
protocol kernel {{ ipv4 {{ export where source = RTS_BGP; }}; learn off; }}
{peers}"""

CLIENT_PEER = """\
protocol bgp rr_{n} {{
    description "route reflector";
    local {local} as {asn};
    neighbor {address} internal;
    direct;
    hold time {hold};
    connect retry time 1;
    error wait time 1,2;
    ipv4 {{ import all; export where source = RTS_STATIC; next hop self; }};
}}
"""


@dataclass
class BirdClientConfig:
    router_id: str
    asn: int
    hold_time: int
    reflectors: list[str]
    networks: list[str]  # announced (a blackhole here, as Calico's block)


class BirdClient(Bird):
    """BIRD 2 as a node: a client of the reflectors, announcing its networks and
    installing what it learns into its kernel (``protocol kernel``, proto bird).
    ``direct``: the reflectors and next hops are on the segment; without it iBGP resolves
    next hops recursively through an IGP table there is none of (unreachable routes)."""

    def __init__(self, rundir: RunDir, owner: str, netns: str | None,
                 cfg: BirdClientConfig) -> None:  # noqa: D107
        Daemon.__init__(self, rundir, owner, netns)
        self.client = cfg
        self.socket = self.dir / "bird.ctl"

    def render_config(self) -> str:
        c = self.client
        peers = "".join(CLIENT_PEER.format(n=i, local=c.router_id, asn=c.asn, address=a,
                                           hold=c.hold_time)
                        for i, a in enumerate(c.reflectors, 1))
        statics = " ".join(f"route {p} blackhole;" for p in c.networks)
        return CLIENT.format(name=self.owner, router_id=c.router_id, log=self.log_file,
                             statics=statics, peers=peers)
