"""agnhost's one-shot tools: connect (exit code + a fixed stderr word), pause, and the
DNS readers (dns-suffix, dns-server-list, etc-hosts)."""

from __future__ import annotations

import os
import signal
import socket
import sys

from knetlab.kube.agnhost import (
    UsageError,
    errtext,
    go_addr,
    parse_flags,
    resolve,
    split_host_port,
)


def connect(argv: list[str]) -> int:
    try:
        opts, args = parse_flags(argv, {"timeout": ("duration", 0.0), "protocol": ("str", "tcp"),
                                        "udp-data": ("str", "hostname"),
                                        "sctp-data": ("str", "hostname")})
        if len(args) != 1:
            raise UsageError(f"accepts 1 arg(s), received {len(args)}")
        host, port = split_host_port(args[0])
    except (UsageError, ValueError) as exc:
        return _fail(f"UNKNOWN: {exc}")
    timeout = float(opts["timeout"]) or None   # 0: the operating system's limit
    proto = str(opts["protocol"])
    if proto not in ("", "tcp", "udp"):
        return _fail(f"UNKNOWN: unsupported protocol {proto!r}")
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    try:
        family, addr = resolve(host, port, kind)
    except ValueError as exc:
        return _fail(f"DNS: {exc}")
    sock = socket.socket(family, kind)
    sock.settimeout(timeout)
    with sock:
        if kind == socket.SOCK_STREAM:
            try:
                sock.connect(addr)
            except TimeoutError:
                return _fail("TIMEOUT")
            except ConnectionRefusedError:
                return _fail("REFUSED")
            except OSError as exc:
                return _fail(f"OTHER: dial tcp {args[0]}: connect: {errtext(exc)}")
            return 0
        try:
            sock.connect(addr)
        except OSError as exc:
            return _fail(f"OTHER: dial udp {args[0]}: {errtext(exc)}")
        where = f"udp {go_addr(sock.getsockname())}->{go_addr(addr)}"
        try:
            sock.send(f"{opts['udp_data']}\n".encode())
            data = sock.recv(1024)
        except TimeoutError as exc:
            return _fail(f"TIMEOUT: read {where}: {errtext(exc)}")
        except ConnectionRefusedError as exc:
            return _fail(f"REFUSED: read {where}: {errtext(exc)}")
        except OSError as exc:
            return _fail(f"UNKNOWN: read {where}: {errtext(exc)}")
        if not data:
            return _fail("OTHER: No data received from the server. Cannot guarantee the "
                         "server received the request.")
    return 0


def _fail(line: str) -> int:
    sys.stderr.write(line + "\n")
    return 1


def pause(argv: list[str]) -> int:
    """Sleep until signalled: exit 1 on SIGINT, 2 on SIGTERM (upstream's codes)."""
    parse_flags(argv, {})
    for sig, code in ((signal.SIGINT, 1), (signal.SIGTERM, 2)):
        signal.signal(sig, lambda *_, c=code: os._exit(c))
    print("Paused", flush=True)   # after the handlers: whoever saw it may signal at once
    while True:
        signal.pause()


RESOLV_CONF = "/etc/resolv.conf"   # the kubelet writes the pod's own (cluster DNS, search)
ETC_HOSTS = "/etc/hosts"


def _resolv_list(keyword: str) -> int:
    """The first ``keyword`` line's values, comma-joined (upstream's output, newline too)."""
    with open(RESOLV_CONF) as f:
        for line in f.read().split("\n"):
            if line.startswith(keyword):
                print(",".join(line.split(" ")[1:]))
                return 0
    sys.stderr.write("panic: Could not find DNS search list!\n")
    return 2


def dns_suffix(argv: list[str]) -> int:
    parse_flags(argv, {})
    return _resolv_list("search")


def dns_server_list(argv: list[str]) -> int:
    parse_flags(argv, {})
    return _resolv_list("nameserver")


def etc_hosts(argv: list[str]) -> int:
    parse_flags(argv, {})
    with open(ETC_HOSTS) as f:
        print(f.read())
    return 0

