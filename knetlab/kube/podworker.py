"""One pod's lifecycle on its node: sandbox, init containers, containers, probes, termination.

Design notes. A ``PodWorker`` is a state machine, not a thread: the kubelet's work queue
calls ``sync(pod)`` (never twice at once for one pod) whenever the pod changed, a process
of it exited (pidfd), a probe flipped, or a timer it asked for (back-off) fired. ``sync``
does the next step without waiting on anything slow (a grace period, a back-off), and
returns how long until it wants to be called again. Status is computed from this state
and written with one status merge-patch only when it differs from what was last written.

Processes: the sandbox is a pause process (``sandbox.py``); a container is
``nsenter --target <pause> --net --uts --mount --root -- argv`` in its own session, so a
stop signals its whole process group. Nothing of a pod outlives its teardown: processes
still in the pod's mount namespace (``kubectl exec`` leftovers) are killed with it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

from knetlab.errors import KnetlabError
from knetlab.kube import adoption, events, runtime
from knetlab.kube.images import UnknownImage, resolve
from knetlab.kube.probes import Probe
from knetlab.kube.sandboxes import Sandbox, SandboxError, now
from knetlab.kube.volumes import (
    REFRESH_S,
    ConfigError,
    Lookup,
    Volumes,
    env_from_objects,
    env_value,
)

if TYPE_CHECKING:
    from knetlab.kube.kubelet import Kubelet

log = logging.getLogger("knetlab.kube.podworker")
BACKOFF_START, BACKOFF_MAX = 10.0, 300.0
CONFIG_RETRY_S = 2.0
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_VOLUME = "kube-api-access"  # upstream adds a random suffix
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class Container:
    """One container's runtime state (across restarts)."""

    def __init__(self, spec: dict[str, Any], init: bool) -> None:
        self.spec, self.init, self.name = spec, init, spec["name"]
        self.restart_count = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict[str, Any] = {}
        self.exit_code: int | None = None
        self.backoff = 0.0  # delay before the next restart: 0, 10 s, doubling to 5 min
        self.backoff_shown = 0.0
        self.next_start = 0.0
        self.started_once = False
        self.started_mono = 0.0
        self.pull_failures = 0
        self.probes: dict[str, Probe] = {}
        self.kill_reason = ""  # why the kubelet stopped it (liveness, startup)
        self.kill_sent = False  # the Killing event of kill_reason was written

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop_probes(self) -> None:
        for p in self.probes.values():
            p.stopped = True
        self.probes = {}

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    @property
    def ready(self) -> bool:
        if not self.running:
            return False
        if "startup" in self.probes and not self.probes["startup"].ok:
            return False
        if "readiness" in self.probes:
            return self.probes["readiness"].ok
        return True

    def status(self, image: str, cid: str) -> dict[str, Any]:
        started = self.running and ("startup" not in self.probes or self.probes["startup"].ok)
        return {"name": self.name, "image": image, "imageID": f"knetlab://{image}",
                "containerID": f"knetlab://{cid}", "ready": self.ready,
                "started": started, "restartCount": self.restart_count,
                "state": self.state, "lastState": self.last_state}


class PodWorker:
    def __init__(self, kubelet: Kubelet, pod: dict[str, Any]) -> None:
        self.k = kubelet
        meta = pod["metadata"]
        self.ns, self.name, self.uid = meta.get("namespace", "default"), meta["name"], meta["uid"]
        self.key = f"{self.ns}/{self.name}"
        self.dir = runtime.pod_dir(kubelet.rundir, kubelet.node, self.ns, self.name, self.uid)
        self.sandbox = Sandbox(kubelet, self.dir, self.ns, self.name, self.uid)
        self.volumes = Volumes(kubelet.client, self.dir, self.sandbox)
        self.next_refresh = 0.0
        self.adoption_tried = False
        spec = pod.get("spec") or {}
        self.host_network = bool(spec.get("hostNetwork"))
        self.inits = [Container(c, True) for c in spec.get("initContainers") or []]
        self.containers = [Container(c, False) for c in spec.get("containers") or []]
        self.start_time = now()
        self.conditions: dict[str, tuple[str, str]] = {}  # type -> (status, since)
        self.last_written: dict[str, Any] | None = None
        self.sandbox_backoff = 0.0
        self.sandbox_next = 0.0
        self.sandbox_message = ""
        self.term_deadline: float | None = None
        self.done = False  # torn down (terminal phase or deleted)
        self.deleted = False  # the API object deleted for good (grace 0)
        self.phase = "Pending"

    # -- the sync loop -------------------------------------------------------------------
    def sync(self, pod: dict[str, Any]) -> float | None:
        if not self.adoption_tried:  # a sandbox an earlier kubelet left running is ours
            self.adoption_tried = True
            adoption.adopt(self, pod)
        if pod["metadata"].get("deletionTimestamp"):
            return self.terminate(pod)
        if self.done:
            return None
        delays: list[float] = []
        if not self.sandbox.alive():
            if self.sandbox.pid is not None:  # it died under us: start over, like upstream
                self.kill_all(signal.SIGKILL)
                self.sandbox.teardown()
            wait = self.sandbox_next - time.monotonic()
            if wait > 0:
                return wait
            self.volumes.mounted.clear()  # they went with the old pause's mount namespace
            try:
                self.sandbox.create(pod, self.host_network)
                self.sandbox_backoff, self.sandbox_message = 0.0, ""
            except (SandboxError, OSError) as exc:
                log.warning("pod %s: sandbox: %s", self.key, exc)
                self.sandbox_message = str(exc)
                self.sandbox_backoff = min(max(self.sandbox_backoff * 2, 2.0), BACKOFF_MAX)
                self.sandbox_next = time.monotonic() + self.sandbox_backoff
                self.write_status(pod)
                return self.sandbox_backoff
        policy = (pod.get("spec") or {}).get("restartPolicy", "Always")
        inits_done = True
        for c in self.inits:
            self.reap(c, pod)
            if c.exit_code == 0 and not c.running:
                continue
            inits_done = False
            if c.running:
                break
            if c.exit_code is not None and policy == "Never":
                self.phase = "Failed"
                break
            delays += self.maybe_start(c, pod)
            break
        if inits_done and self.phase != "Failed":
            for c in self.containers:
                self.reap(c, pod)
                if c.running:
                    if c.kill_reason:  # liveness/startup failed: restart it
                        if not c.kill_sent:
                            c.kill_sent = True
                            probe = "startup" if c.kill_reason.startswith("Startup") \
                                else "liveness"
                            self.event(c, "Normal", "Killing", f"Container {c.name} failed "
                                       f"{probe} probe, will be restarted")
                        c.signal(signal.SIGKILL)
                    continue
                if c.exit_code is not None and not self.should_restart(c, policy):
                    continue
                delays += self.maybe_start(c, pod)
            self.phase = self.compute_phase(policy)
        if self.volumes.refreshable and self.phase == "Running":
            delays.append(self.refresh_volumes(pod))
        self.write_status(pod)
        if self.phase in ("Succeeded", "Failed"):
            self.kill_all(signal.SIGKILL)
            self.sandbox.teardown(keep_dir=True)
            self.done = True
            return None
        return min(delays) if delays else None

    def should_restart(self, c: Container, policy: str) -> bool:
        return policy == "Always" or (policy == "OnFailure" and c.exit_code != 0)

    def compute_phase(self, policy: str) -> str:
        if any(c.running for c in self.containers):
            return "Running"
        pending = [c for c in self.containers
                   if c.exit_code is None or self.should_restart(c, policy)]
        if not pending:
            ok = all(c.exit_code == 0 for c in self.containers)
            return "Succeeded" if ok else "Failed"
        if any(c.restart_count or c.exit_code is not None for c in self.containers):
            return "Running"
        return "Pending"

    def reap(self, c: Container, pod: dict[str, Any]) -> None:
        """Notice that a container exited: terminated state, probes stopped."""
        if c.proc is None or c.proc.poll() is None:
            return
        code = c.proc.returncode
        code = 128 - code if code < 0 else code  # killed by signal N: 128+N, as runtimes say
        started = c.state.get("running", {}).get("startedAt", "")
        reason = "Completed" if code == 0 else "Error"
        c.state = {"terminated": {"exitCode": code, "reason": reason, "startedAt": started,
                                  "finishedAt": now(), "containerID": f"knetlab://{self.cid(c)}"}}
        if c.kill_reason:
            c.state["terminated"]["message"] = c.kill_reason
        elif getattr(c.proc, "unknown_exit", False):
            c.state["terminated"]["message"] = adoption.UNKNOWN_MESSAGE
        c.exit_code, c.proc, c.kill_reason, c.kill_sent = code, None, "", False
        c.stop_probes()
        if time.monotonic() - c.started_mono > 2 * BACKOFF_MAX:
            c.backoff = 0.0  # it ran long enough: forget past crashes, as upstream
        c.next_start, c.backoff_shown = time.monotonic() + c.backoff, c.backoff
        c.backoff = BACKOFF_START if not c.backoff else min(c.backoff * 2, BACKOFF_MAX)

    def maybe_start(self, c: Container, pod: dict[str, Any]) -> list[float]:
        """Start (or restart after back-off) one container; return a wanted re-sync delay."""
        wait = c.next_start - time.monotonic()
        if wait > 0:
            if "terminated" in c.state:  # crash loop: shown as waiting, the run as lastState
                c.last_state = c.state
                c.state = {"waiting": {"reason": "CrashLoopBackOff", "message": (
                    f"back-off {int(c.backoff_shown)}s restarting failed container={c.name} "
                    f"pod={self.name}_{self.ns}({self.uid})")}}
                self.event(c, "Warning", "BackOff", "Back-off restarting failed container "
                           f"{c.name} in pod {self.name}_{self.ns}({self.uid})")
            return [wait]
        try:
            restart = c.started_once
            if restart:
                c.restart_count += 1
                if "terminated" in c.state:
                    c.last_state = c.state
            try:
                self.start(c, pod)
            except BaseException:
                if restart:
                    c.restart_count -= 1
                raise
            c.exit_code, c.pull_failures, c.started_once = None, 0, True
        except (UnknownImage, OSError, ValueError, KnetlabError) as exc:
            pull = isinstance(exc, UnknownImage)
            reason = "CreateContainerError"
            if pull:
                reason = "ImagePullBackOff" if c.pull_failures else "ErrImagePull"
            elif isinstance(exc, ConfigError):
                reason = "CreateContainerConfigError"
            c.pull_failures += 1
            c.state = {"waiting": {"reason": reason, "message": str(exc)}}
            image = c.spec.get("image", "")
            if not pull:
                self.event(c, "Warning", "Failed", f"Error: {exc}")
            elif reason == "ErrImagePull":
                self.event(c, "Warning", "Failed", f'Failed to pull image "{image}": {exc}')
                self.event(c, "Warning", "Failed", "Error: ErrImagePull")
            else:
                self.event(c, "Normal", "BackOff", f'Back-off pulling image "{image}"')
                self.event(c, "Warning", "Failed", "Error: ImagePullBackOff")
            delay = min(BACKOFF_START * 2 ** (c.pull_failures - 1), BACKOFF_MAX)
            if isinstance(exc, ConfigError):
                delay = CONFIG_RETRY_S  # waiting for the user to create it: look again soon
            c.next_start = time.monotonic() + delay
            return [delay]
        return []

    def refresh_volumes(self, pod: dict[str, Any]) -> float:
        """Rewrite configMap/secret/downwardAPI files now and then; the wanted delay."""
        wait = self.next_refresh - time.monotonic()
        if wait > 0:
            return wait
        try:
            self.volumes.write_files(pod)
        except (KnetlabError, OSError) as exc:
            log.warning("pod %s: volumes: %s", self.key, exc)
        self.next_refresh = time.monotonic() + REFRESH_S
        return REFRESH_S

    def event(self, c: Container | None, etype: str, reason: str, message: str) -> None:
        """One Event about this pod (or one of its containers); queued, never waited on."""
        path = events.field_path(c.name, c.init) if c is not None else ""
        self.k.events.emit({"kind": "Pod", "name": self.name, "namespace": self.ns,
                            "uid": self.uid}, etype, reason, message, path)

    def cid(self, c: Container) -> str:
        return runtime.container_id(self.uid, f"{c.name}/{c.restart_count}")

    # -- starting a container ------------------------------------------------------------
    def env_of(self, c: Container, pod: dict[str, Any], image_env: dict[str, str],
               lookup: Lookup | None = None) -> dict[str, str]:
        env = {"PATH": runtime.DEFAULT_PATH, **image_env, **self.k.service_env(),
               "HOSTNAME": self.sandbox.hostname}
        lookup = lookup or Lookup(self.k.client, self.ns)
        env_from_objects(lookup, c.spec, env)
        fields = {"metadata.name": self.name, "metadata.namespace": self.ns,
                  "metadata.uid": self.uid, "spec.nodeName": self.k.node,
                  "spec.serviceAccountName": (pod.get("spec") or {}).get(
                      "serviceAccountName", "default"),
                  "status.podIP": self.sandbox.ip, "status.hostIP": self.k.node_ip}
        for e in c.spec.get("env") or []:
            if "value" in e:
                env[e["name"]] = VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)),
                                             str(e["value"]))
            elif "fieldRef" in (e.get("valueFrom") or {}):
                path = e["valueFrom"]["fieldRef"].get("fieldPath", "")
                if path.startswith("metadata.labels['"):
                    env[e["name"]] = (pod["metadata"].get("labels") or {}).get(
                        path[len("metadata.labels['"):-2], "")
                else:
                    env[e["name"]] = fields.get(path, "")
            elif (value := env_value(lookup, e.get("valueFrom") or {})) is not None:
                env[e["name"]] = value
        return env

    def mount_service_account(self, pod: dict[str, Any], container: dict[str, Any]) -> None:
        """What the ServiceAccount admission plugin's projected volume gives a real pod:
        ``token``, ``ca.crt`` and ``namespace`` at SA_DIR, so the official clients'
        in-cluster config works. The token is the lab's one (the API has no per-account
        tokens); ``automountServiceAccountToken: false`` or a volume mounted there wins."""
        spec = pod.get("spec") or {}
        if spec.get("automountServiceAccountToken") is False or any(
                vm.get("mountPath", "").rstrip("/") == SA_DIR
                for vm in container.get("volumeMounts") or []):
            return
        # A volume of the pod's own, bind-mounted read-only at SA_DIR, as the kubelet mounts
        # the projected ``kube-api-access-*`` volume: writing through the pod's root would
        # land in the machine's /run (``/var/run`` -> ``/run``, which every pod shares), so
        # every pod of every lab would read the last-started pod's token and namespace.
        client = self.k.client
        src = self.dir / "volumes" / SA_VOLUME
        src.mkdir(parents=True, exist_ok=True)
        for name, content in (("token", client.token), ("namespace", self.ns),
                              ("ca.crt", client.ca_data.decode())):
            tmp = src / f".{name}.tmp"  # renamed over: a reader never sees half a token
            tmp.write_text(content)
            tmp.replace(src / name)
        self.volumes.mount({"volumeMounts": [{"name": SA_VOLUME, "mountPath": SA_DIR,
                                              "readOnly": True}]},
                           {"spec": {"volumes": [{"name": SA_VOLUME, "emptyDir": {}}]}})

    def start(self, c: Container, pod: dict[str, Any]) -> None:
        spec = c.spec
        ports = [int(p["containerPort"]) for p in spec.get("ports") or []
                 if "containerPort" in p]
        run = resolve(spec.get("image", ""), spec.get("command"), spec.get("args"),
                      pod_name=self.name, container_ports=ports, run_dir=self.k.rundir)
        self.event(c, "Normal", "Pulled",
                   f'Container image "{spec.get("image", "")}" already present on machine')
        lookup = Lookup(self.k.client, self.ns)
        self.volumes.write_files(pod, lookup)
        self.volumes.mount(spec, pod)
        self.mount_service_account(pod, spec)
        env = self.env_of(c, pod, run.env, lookup)
        argv = [VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), a) for a in run.argv]
        for d in run.dirs:
            os.makedirs(self.sandbox.in_root(d), exist_ok=True)
        for path, content in run.files.items():
            self.sandbox.write(path, content, 0o755 if path in run.executable else 0o644)
        wd = spec.get("workingDir") or "/"
        runtime.write_exec_info(self.dir, c.name, env, wd, self.host_network)
        cdir = runtime.container_dir(self.dir, c.name)
        assert self.sandbox.pid is not None
        with open(cdir / f"{c.restart_count}.log", "ab") as logf:
            c.proc = subprocess.Popen(runtime.enter_argv(self.sandbox.pid, wd, argv), env=env,
                                      stdin=subprocess.DEVNULL, stdout=logf,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        (cdir / "pid").write_text(f"{c.proc.pid}\n")
        self.event(c, "Normal", "Created", f"Created container: {c.name}")
        self.event(c, "Normal", "Started", f"Started container {c.name}")
        c.state = {"running": {"startedAt": now()}}
        c.started_mono = time.monotonic()
        self.k.watch_pid(c.proc.pid, self.key)
        self.start_probes(c, pod)

    def start_probes(self, c: Container, pod: dict[str, Any]) -> None:
        def exec_argv(command: list[str]) -> tuple[list[str], dict[str, str]]:
            return runtime.exec_argv(self.k.rundir, pod, c.name, command)

        for kind in ("startup", "liveness", "readiness"):
            spec = c.spec.get(f"{kind}Probe")
            if spec and not c.init:
                c.probes[kind] = p = Probe(kind, spec, c.spec,
                                           self.sandbox.ip or self.k.node_ip, exec_argv,
                                           lambda c=c: self.probe_changed(c))
                p.on_failure = lambda msg, c=c, kind=kind: self.event(
                    c, "Warning", "Unhealthy", f"{kind.capitalize()} probe failed: {msg}")
        startup = c.probes.get("startup")
        for p in c.probes.values():
            p.enabled = p.kind == "startup" or startup is None
            self.k.prober.add(p, float(p.spec.get("initialDelaySeconds", 0)))

    def probe_changed(self, c: Container) -> None:
        """Called from a probe thread: decide, then let the pod's worker act."""
        startup, live = c.probes.get("startup"), c.probes.get("liveness")
        if startup is not None and startup.failures >= startup.failure_threshold:
            c.kill_reason = f"Startup probe failed: {startup.message}"
        elif live is not None and not live.ok:
            c.kill_reason = f"Liveness probe failed: {live.message}"
        if startup is not None and startup.ok:
            for p in c.probes.values():
                if not p.enabled:  # started: readiness and liveness run now, not a period
                    p.enabled = True  # later (upstream triggers readiness at once too)
                    self.k.prober.run_now(p)
        self.k.queue.add(self.key)

    # -- status --------------------------------------------------------------------------
    def condition(self, kind: str, ok: bool) -> dict[str, Any]:
        status = "True" if ok else "False"
        prev = self.conditions.get(kind)
        if prev is None or prev[0] != status:
            self.conditions[kind] = prev = (status, now())
        return {"type": kind, "status": status, "lastProbeTime": None,
                "lastTransitionTime": prev[1]}

    def write_status(self, pod: dict[str, Any]) -> None:
        specs = {c["name"]: c.get("image", "") for c in
                 (pod["spec"].get("initContainers") or []) + pod["spec"]["containers"]}
        inits_done = all(c.exit_code == 0 for c in self.inits)
        ready = (self.phase == "Running" and bool(self.containers)
                 and all(c.ready for c in self.containers))
        status: dict[str, Any] = {
            "phase": self.phase, "hostIP": self.k.node_ip,
            "hostIPs": [{"ip": self.k.node_ip}], "startTime": self.start_time,
            "qosClass": "BestEffort",
            "conditions": [self.condition("PodReadyToStartContainers",
                                          self.sandbox.ip is not None),
                           self.condition("Initialized", inits_done),
                           self.condition("ContainersReady", ready),
                           self.condition("Ready", ready),
                           self.condition("PodScheduled", True)],
            "containerStatuses": [c.status(specs[c.name], self.cid(c))
                                  for c in self.containers]}
        if self.inits:
            status["initContainerStatuses"] = [c.status(specs[c.name], self.cid(c))
                                               for c in self.inits]
        if self.sandbox.ip:
            status["podIP"] = self.sandbox.ip
            status["podIPs"] = [{"ip": self.sandbox.ip}]
        if self.sandbox_message:
            status["message"] = f"sandbox: {self.sandbox_message}"
            status["reason"] = "FailedCreatePodSandBox"
        if status == self.last_written:
            return
        try:
            self.k.client.patch("pods", self.name, {"status": status}, self.ns,
                                subresource="status")
            self.last_written = status
        except Exception as exc:  # noqa: BLE001 - retried at the next sync
            log.warning("pod %s: status: %s", self.key, exc)
            self.k.queue.add_after(self.key, 1.0)

    # -- termination ---------------------------------------------------------------------
    def kill_all(self, sig: int) -> None:
        for c in self.inits + self.containers:
            c.stop_probes()
            c.signal(sig)

    def terminate(self, pod: dict[str, Any] | None) -> float | None:
        """Graceful stop: SIGTERM, wait the grace period (re-synced, not blocking), SIGKILL,
        tear the sandbox down, then delete the pod for good (grace 0)."""
        if self.term_deadline is None:
            grace = 30
            if pod is not None:
                grace = pod["metadata"].get("deletionGracePeriodSeconds",
                                            pod["spec"].get("terminationGracePeriodSeconds", 30))
            self.term_deadline = time.monotonic() + max(0, int(grace))
            for c in self.inits + self.containers:
                if c.running:
                    self.event(c, "Normal", "Killing", f"Stopping container {c.name}")
            self.kill_all(signal.SIGTERM)
        alive = [c for c in self.inits + self.containers if c.running]
        if alive and time.monotonic() < self.term_deadline:
            return 0.2
        self.kill_all(signal.SIGKILL)
        for c in self.inits + self.containers:
            if c.proc is not None:
                try:
                    c.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
        if not self.done or self.sandbox.pid is not None:
            self.sandbox.teardown()
        self.done = True
        if pod is not None and not self.deleted:
            try:
                self.k.client.delete("pods", self.name, self.ns, grace_period=0, uid=self.uid)
            except Exception as exc:  # noqa: BLE001 - 404 (already gone) is fine
                if getattr(exc, "code", 0) not in (404, 409):
                    log.warning("pod %s: delete: %s", self.key, exc)
                    return 1.0
            self.deleted = True
        return None
