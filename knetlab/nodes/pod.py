"""A pod: one network namespace held by one long-lived process (the pause container).

The pause is the cheapest process that holds a namespace and that ``knetlab clean`` can
recognise: ``pause mininet:<pod>`` (``pause.c``, built by scripts/setup.sh) in its own
session, which makes the namespace, says so, and blocks reading a pipe this process never
writes again. Mininet's command shell (an interactive bash on a pty, what a plain Mininet
host pays for at start) is started only when something first talks to the pod
(``pod.cmd``, the Mininet CLI), entered into the pause's namespace, so most pods of a big
lab never pay for it. Every container of the pod is a process started in that namespace,
so they share lo and eth0 as in Kubernetes. ``eth0`` is made by the CNI runtime on the
pod's node, not by Mininet.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
from subprocess import PIPE, Popen
from typing import TYPE_CHECKING, Any

from mininet.link import Intf
from mininet.node import Node

from knetlab.errors import KnetlabError
from knetlab.netns import link_up
from knetlab.nodes.host import NetnsHost

if TYPE_CHECKING:
    from knetlab.rundir import RunDir

#: the pause program (pause.c, built by scripts/setup.sh)
PAUSE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pause")


def _no_move(*_args: Any, **_kw: Any) -> bool:
    return True  # CNI already put the interface in the pod's namespace


def _lazy_shell_attr(attr: str) -> property:
    """One of Mininet's shell attributes (``shell``, ``stdin``, ...): reading it starts the
    command shell if the pod has none yet, so all of Mininet's ``Node`` code works as is."""
    key = "_mn_" + attr

    def get(self: Pod) -> Any:
        if self.__dict__.get(key) is None and self._shell_wanted():
            self._start_command_shell()
        return self.__dict__.get(key)

    def put(self: Pod, value: Any) -> None:
        self.__dict__[key] = value
    return property(get, put)


class Pod(NetnsHost):
    shell = _lazy_shell_attr("shell")
    stdin = _lazy_shell_attr("stdin")
    stdout = _lazy_shell_attr("stdout")
    pollOut = _lazy_shell_attr("pollOut")  # noqa: N815 - Mininet's name

    def __init__(self, name: str, rundir: RunDir, node: str, **params: Any) -> None:
        self._pause: Popen[bytes] | None = None
        self._shell_lock = threading.Lock()
        self._starting: int | None = None  # the thread starting the command shell
        self._stopped = False
        super().__init__(name, rundir, **params)
        self.node_name = node
        self.container_id = hashlib.sha1(f"{rundir.cluster}/{name}".encode()).hexdigest()
        self.ip = ""
        self.cni_result: dict[str, Any] = {}
        link_up(self.netns, "lo")

    # -- the pause and the command shell ------------------------------------------------
    def startShell(self, mnopts: Any = None) -> None:  # noqa: N802 - Mininet's name
        """Start the pause only (Mininet calls this from ``Node.__init__``)."""
        # Not mnexec -cdn as Mininet does: its -c closes every possible descriptor one by
        # one (RLIMIT_NOFILE of them: 4-5 ms of CPU here); Popen closes them with
        # close_range and makes the session itself.
        try:
            self._pause = Popen([PAUSE, f"mininet:{self.name}"], stdin=PIPE, stdout=PIPE,
                                stderr=PIPE, start_new_session=True)
        except OSError as exc:  # not built (or not executable)
            raise KnetlabError(f"cannot start pod {self.name}'s pause {PAUSE}: "
                               f"{exc.strerror}; build it with `make setup`") from None
        # Once it answers, it has made the namespace: /proc/PID/ns/net is the pod's.
        assert self._pause.stdin and self._pause.stdout and self._pause.stderr
        answer = self._pause.stdout.readline()
        self._pause.stdout.close()  # the pause never writes again
        if answer != b"ready\n":
            raise KnetlabError(f"pause process of pod {self.name} did not start "
                               f"(exit code {self._pause.wait()}): "
                               f"{self._pause.stderr.read().decode().strip()}")
        self._pause.stderr.close()

    @property
    def pid(self) -> int | None:  # type: ignore[override]
        """The pause's pid, always (the namespace's holder: ``/proc/PID/ns/net``); the
        command shell's own pid, which Mininet's ``startShell`` sets, is kept apart."""
        return self._pause.pid if self._pause is not None else self.__dict__.get("_mn_pid")

    @pid.setter
    def pid(self, value: int | None) -> None:
        self.__dict__["_mn_pid"] = value

    def _shell_wanted(self) -> bool:
        # Not while this thread starts it (Mininet's startShell reads them); another
        # thread waits on the lock for the shell being started.
        return (self._starting != threading.get_ident() and not self._stopped
                and self._pause is not None and self._pause.poll() is None)

    def _start_command_shell(self) -> None:
        """Mininet's own shell, entered into the pause's network namespace."""
        with self._shell_lock:
            if self.__dict__.get("_mn_shell") is not None:
                return
            # its namespace: the pause's (nsenter in _popen), not a new one
            self._starting, self.inNamespace = threading.get_ident(), False
            try:
                Node.startShell(self)
            finally:
                self._starting, self.inNamespace = None, True
            self.rundir.record_process(self.__dict__["_mn_pid"], f"mininet:{self.name}",
                                       self.name)

    def _popen(self, cmd: list[str], **params: Any) -> Any:
        if self._starting is not None:  # the command shell: into the pause's namespace
            cmd = ["nsenter", f"--target={self.pid}", "--net", "--", *cmd]
        return super()._popen(cmd, **params)

    def terminate(self) -> None:
        self._stopped = True
        if self.__dict__.get("_mn_shell") is not None:
            super().terminate()
        if self._pause is not None:
            if self._pause.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._pause.pid, signal.SIGHUP)
            if self._pause.stdin:
                self._pause.stdin.close()
            self._pause.poll()

    # -- the network ------------------------------------------------------------------
    def attached(self, result: dict[str, Any], ifname: str = "eth0") -> None:
        """Record the CNI result and show eth0 to Mininet (for ``pod ping other-pod``)."""
        self.cni_result = result
        address = result["ips"][0]["address"]
        self.ip = address.split("/")[0]
        mac = next((i.get("mac") for i in result.get("interfaces", [])
                    if i.get("name") == ifname and i.get("sandbox")), None)
        # up=None: CNI has set eth0 up; Mininet's default would run ifconfig in the shell
        intf = Intf(ifname, node=self, moveIntfFn=_no_move, up=None)
        intf.ip, intf.prefixLen, intf.mac = self.ip, int(address.split("/")[1]), mac

    def IP(self, intf: Any = None) -> str:  # noqa: N802 - Mininet's name
        return self.ip


class ApiPod(NetnsHost):
    """A pod the API created (kubectl, a controller), shown to Mininet as a host.

    The kubelet owns the sandbox; this host is only a shell entered into the pod's network,
    UTS and mount namespaces (``nsenter`` before Mininet's ``mnexec``), so that the Mininet
    CLI can run ``web-0 ping web-1`` as it does for any host. The kubelet's teardown of the
    pod kills the shell with the pod's other processes.
    """

    def __init__(self, name: str, rundir: RunDir, node: str, sandbox_pid: int, ip: str,
                 **params: Any) -> None:
        self.sandbox_pid = sandbox_pid
        super().__init__(name, rundir, inNamespace=False, **params)
        self.node_name, self.ip = node, ip
        intf = Intf("eth0", node=self, moveIntfFn=_no_move)
        intf.ip, intf.prefixLen = ip, 32

    def _popen(self, cmd: list[str], **params: Any) -> Any:
        enter = ["nsenter", f"--target={self.sandbox_pid}", "--net", "--uts", "--mount", "--"]
        return super()._popen(enter + list(cmd), **params)

    def IP(self, intf: Any = None) -> str:  # noqa: N802 - Mininet's name
        return self.ip
