"""One Open vSwitch instance (ovsdb-server + ovs-vswitchd) in its own run directory.

There is no OVS kernel module here, so instances are started by hand (``ovs-ctl`` would
try to load it) and bridges use the userspace datapath (``datapath_type=netdev``). Each
instance lives in one folder: database, sockets, pid files and logs; ``OVS_RUNDIR``
points ``ovs-vsctl`` at it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from knetlab import shell
from knetlab.daemon import Daemon
from knetlab.errors import UnsupportedError
from knetlab.rundir import RunDir

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")


class OvsdbServer(Daemon):
    name = "ovsdb-server"

    def __init__(self, rundir: RunDir, owner: str, ovs_dir: Path, netns: str | None) -> None:
        super().__init__(rundir, owner, netns)
        self.ovs_dir = ovs_dir

    def command(self) -> list[str]:
        d = self.ovs_dir
        return ["ovsdb-server", str(d / "conf.db"), f"--remote=punix:{d / 'db.sock'}",
                "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
                f"--pidfile={self.pid_file}", f"--unixctl={d / 'ovsdb-server.ctl'}",
                f"--log-file={self.log_file}", "-vconsole:off"]

    def env(self) -> dict[str, str]:
        return ovs_env(self.ovs_dir)

    def is_ready(self) -> bool:
        return (self.ovs_dir / "db.sock").exists()


class OvsVswitchd(Daemon):
    name = "ovs-vswitchd"

    def __init__(self, rundir: RunDir, owner: str, ovs_dir: Path, netns: str | None) -> None:
        super().__init__(rundir, owner, netns)
        self.ovs_dir = ovs_dir

    def command(self) -> list[str]:
        d = self.ovs_dir
        return ["ovs-vswitchd", f"unix:{d / 'db.sock'}", f"--pidfile={self.pid_file}",
                f"--unixctl={d / 'ovs-vswitchd.ctl'}", f"--log-file={self.log_file}",
                "-vconsole:off"]

    def env(self) -> dict[str, str]:
        return ovs_env(self.ovs_dir)

    def is_ready(self) -> bool:
        return (self.ovs_dir / "ovs-vswitchd.ctl").exists()


def ovs_env(ovs_dir: Path) -> dict[str, str]:
    d = str(ovs_dir)
    return {"OVS_RUNDIR": d, "OVS_DBDIR": d, "OVS_LOGDIR": d, "OVS_SYSCONFDIR": d}


class OvsInstance:
    def __init__(self, rundir: RunDir, owner: str, netns: str | None = None) -> None:
        if not shutil.which("ovs-vswitchd") or not SCHEMA.exists():
            raise UnsupportedError("Open vSwitch is not installed (no ovs-vswitchd or "
                                   f"{SCHEMA}); run `make setup` or apt-get install "
                                   "openvswitch-switch")
        self.dir = rundir.daemon_dir(owner, "ovs")
        self.netns = netns
        self.ovsdb = OvsdbServer(rundir, owner, self.dir, netns)
        self.vswitchd = OvsVswitchd(rundir, owner, self.dir, netns)

    @property
    def env(self) -> dict[str, str]:
        return ovs_env(self.dir)

    def start(self) -> None:
        db = self.dir / "conf.db"
        if not db.exists():
            shell.run(["ovsdb-tool", "create", str(db), str(SCHEMA)])
        self.ovsdb.start()
        self.vsctl("--no-wait", "init")
        self.vswitchd.start()

    def vsctl(self, *args: str) -> str:
        return shell.run(["ovs-vsctl", f"--db=unix:{self.dir / 'db.sock'}", *args],
                         netns=self.netns, context="ovs-vsctl " + " ".join(args)).stdout

    def stop(self) -> None:
        self.vswitchd.stop()
        self.ovsdb.stop()
