"""Pod logs and exec, served from the files and namespaces the kubelet leaves.

- logs: ``GET .../pods/P/log`` reads ``log_path(...)`` (``previous``, ``tailLines``,
  ``limitBytes``, ``timestamps``, ``follow``: the file is polled for growth until the pod
  goes, the container restarts into a new log file, or the client leaves).
- exec: a WebSocket with the ``v5.channel.k8s.io`` (or v4) subprotocol; binary frames whose
  first byte is the channel (0 stdin, 1 stdout, 2 stderr, 3 status, 4 resize, 255 close).
  The command runs via ``exec_argv`` (nsenter into the pod's namespaces and root); with
  ``tty=true`` on a pty that channel 4 resizes. The exit status goes out on channel 3.
- port-forward lives in ``portforward.py``.
"""

from __future__ import annotations

import asyncio
import datetime
import fcntl
import json
import os
import pty
import struct
import termios
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from knetlab.errors import NotFoundError

from .errors import StatusError, bad_request

Obj = dict[str, Any]
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
SUCCESS = {"metadata": {}, "status": "Success"}


def pick_container(pod: Obj, name: str | None) -> str:
    spec = pod.get("spec") or {}
    names = [c["name"] for c in (spec.get("containers") or []) + (spec.get("initContainers")
                                                                  or [])]
    if not name:
        ann = pod["metadata"].get("annotations") or {}
        name = ann.get("kubectl.kubernetes.io/default-container") or (names[0] if names else "")
    if name not in names:
        raise bad_request(f"container {name} is not valid for pod {pod['metadata']['name']}")
    return name


def _stamp(t: float | None = None) -> bytes:
    dt = datetime.datetime.fromtimestamp(t, datetime.UTC) if t else \
        datetime.datetime.now(datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f000Z ").encode()


def _prefix(data: bytes, stamp: bytes) -> bytes:
    lines = data.splitlines(keepends=True)
    return b"".join(stamp + line for line in lines)


async def logs(request: web.Request, rundir: Path, pod: Obj) -> web.StreamResponse:
    from knetlab.kube.runtime import log_path

    q = request.query
    name = pod["metadata"]["name"]
    container = pick_container(pod, q.get("container"))
    previous = q.get("previous") == "true"
    try:
        path = log_path(rundir, pod, container, previous)
    except NotFoundError:
        path = None
    if path is None or not path.exists():
        if previous:
            raise bad_request(f'previous terminated container "{container}" in pod "{name}" '
                              f"not found")
        raise bad_request(f'container "{container}" in pod "{name}" is waiting to start: '
                          f"ContainerCreating")
    data = path.read_bytes()
    if q.get("tailLines"):
        n = int(q["tailLines"])
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-n:]) if n > 0 else b""
    limit = int(q["limitBytes"]) if q.get("limitBytes") else 0
    stamps = q.get("timestamps") == "true"
    if stamps:
        data = _prefix(data, _stamp(path.stat().st_mtime))
    if limit:
        data = data[:limit]
    if q.get("follow") != "true" or previous:
        return web.Response(body=data, content_type="text/plain")
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(data)
    await _follow(request, resp, rundir, pod, container, path, stamps)
    return resp


async def _follow(request: web.Request, resp: web.StreamResponse, rundir: Path, pod: Obj,
                  container: str, path: Path, stamps: bool) -> None:
    from knetlab.kube.runtime import log_path

    pos = path.stat().st_size
    idle = 0
    with path.open("rb") as f:
        while request.transport is not None and not request.transport.is_closing():
            f.seek(pos)
            chunk = f.read(1 << 16)
            if chunk:
                pos += len(chunk)
                await resp.write(_prefix(chunk, _stamp()) if stamps else chunk)
                continue
            await asyncio.sleep(0.2)
            idle += 1
            if idle % 5 == 0:  # once a second: has the container restarted or gone?
                try:
                    if log_path(rundir, pod, container) != path or not path.exists():
                        return
                except NotFoundError:
                    return


# -- exec ----------------------------------------------------------------------------------
def _status_for(code: int) -> Obj:
    if code == 0:
        return SUCCESS
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: error executing command "
                       f"[...], exit code {code}", "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


async def exec_ws(request: web.Request, rundir: Path, pod: Obj) -> web.StreamResponse:
    from knetlab.kube.runtime import exec_argv

    q = request.query
    phase = (pod.get("status") or {}).get("phase")
    if phase in ("Succeeded", "Failed"):
        raise bad_request(f"cannot exec into a container in a completed pod; current phase "
                          f"is {phase}")
    container = pick_container(pod, q.get("container"))
    command = q.getall("command", [])
    if not command:
        raise bad_request("you must specify at least 1 command")
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise StatusError(400, "BadRequest", "Upgrade request required")
    try:
        argv, env = exec_argv(rundir, pod, container, command)
    except NotFoundError as exc:
        raise bad_request(f"unable to upgrade connection: {exc}") from None
    tty = q.get("tty") in ("true", "1")
    stdin = q.get("stdin") in ("true", "1")
    ws = web.WebSocketResponse(protocols=EXEC_PROTOCOLS, autoping=True, max_msg_size=0)
    await ws.prepare(request)
    session = ExecSession(ws, argv, env, tty, stdin)
    await session.run()
    return ws


class ExecSession:
    def __init__(self, ws: web.WebSocketResponse, argv: list[str], env: dict[str, str],
                 tty: bool, stdin: bool) -> None:
        self.ws, self.argv, self.env, self.tty, self.want_stdin = ws, argv, env, tty, stdin
        self.master: int | None = None

    async def send(self, channel: int, data: bytes) -> None:
        if not self.ws.closed:
            await self.ws.send_bytes(bytes([channel]) + data)

    async def run(self) -> None:
        try:
            proc = await self._spawn()
        except OSError as exc:
            await self.send(3, json.dumps({"metadata": {}, "status": "Failure",
                                           "message": str(exc), "reason": "InternalError"}
                                          ).encode())
            await self.ws.close()
            return
        readers = [asyncio.create_task(self._pump_pty())] if self.tty else [
            asyncio.create_task(self._pump(proc.stdout, 1)),
            asyncio.create_task(self._pump(proc.stderr, 2))]
        inbound = asyncio.create_task(self._inbound(proc))
        code = await proc.wait()
        await asyncio.wait(readers, timeout=2.0)
        inbound.cancel()
        if self.master is not None:
            os.close(self.master)
        try:
            await self.send(3, json.dumps(_status_for(code)).encode())
            await self.ws.close()
        except ConnectionResetError:
            pass

    async def _spawn(self) -> asyncio.subprocess.Process:
        stdin = asyncio.subprocess.PIPE if self.want_stdin else asyncio.subprocess.DEVNULL
        if not self.tty:
            return await asyncio.create_subprocess_exec(
                *self.argv, stdin=stdin, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=self.env, start_new_session=True)
        master, slave = pty.openpty()
        self.master = master
        os.set_blocking(master, False)

        def ctty() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        try:
            return await asyncio.create_subprocess_exec(
                *self.argv, stdin=slave, stdout=slave, stderr=slave, env=self.env,
                preexec_fn=ctty)  # noqa: PLW1509 - a controlling tty needs it
        finally:
            os.close(slave)

    async def _pump(self, stream: asyncio.StreamReader | None, channel: int) -> None:
        if stream is None:
            return
        while True:
            data = await stream.read(1 << 16)
            if not data:
                return
            await self.send(channel, data)

    async def _pump_pty(self) -> None:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[bytes] = asyncio.Queue()
        master = self.master
        assert master is not None

        def readable() -> None:
            try:
                q.put_nowait(os.read(master, 1 << 16))
            except OSError:  # EIO: the last process on the pty is gone
                q.put_nowait(b"")
        loop.add_reader(master, readable)
        try:
            while True:
                data = await q.get()
                if not data:
                    return
                await self.send(1, data)
        finally:
            loop.remove_reader(master)

    async def _inbound(self, proc: asyncio.subprocess.Process) -> None:
        async for msg in self.ws:
            if msg.type != WSMsgType.BINARY or not msg.data:
                continue
            channel, data = msg.data[0], msg.data[1:]
            if channel == 0 and data == b"\x00" and self.master is not None:
                # A lone NUL on a tty's stdin is what kubectl forwards when its own input
                # ends under script(1) (seen with kubectl 1.33 and 1.37, stdin at EOF
                # from the start): written to the pod's terminal it came back as a stray
                # "^@" echo. Dropped; the cost is a deliberate Ctrl-@ keystroke.
                continue
            if channel == 0 and data:
                self._write_stdin(proc, data)
                if proc.stdin is not None:
                    try:
                        await proc.stdin.drain()
                    except ConnectionResetError:
                        pass
            elif channel == 4 and self.master is not None:
                try:
                    size = json.loads(data)
                    fcntl.ioctl(self.master, termios.TIOCSWINSZ,
                                struct.pack("HHHH", size.get("Height", 24),
                                            size.get("Width", 80), 0, 0))
                except (ValueError, OSError):
                    pass
            elif channel == 255 and data[:1] == b"\x00":
                if proc.stdin is not None:
                    proc.stdin.close()
                elif self.master is not None:
                    os.write(self.master, b"\x04")  # EOF on a pty is ^D

    def _write_stdin(self, proc: asyncio.subprocess.Process, data: bytes) -> None:
        try:
            if self.master is not None:
                os.write(self.master, data)
            elif proc.stdin is not None:
                proc.stdin.write(data)
        except OSError:
            pass
