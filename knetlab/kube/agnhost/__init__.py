"""knetlab's agnhost: the Kubernetes e2e test image's network subcommands, in the stdlib.

Run as ``python -m knetlab.kube.agnhost SUBCOMMAND [flags]`` (the ``/agnhost`` wrapper of
the agnhost image does exactly that). Interface and answers follow upstream
(kubernetes test/images/agnhost, summarised in /work/shared/AGNHOST.md). Modules:
this one holds what every subcommand shares (Go-style flags, Go's formats, sockets);
``httpserve`` the HTTP server base; ``netexec``; ``servers`` (serve-hostname, porter,
liveness); ``tools`` (connect, pause, dns-suffix, dns-server-list, etc-hosts);
``__main__`` the command table. Flags are Go/pflag style (``--f=v``, ``--f v``,
``-f=v``; booleans ``--f`` or ``--f=false``). HTTP answers carry no trailing newline.
Modules load lazily, per subcommand: a container should start in tens of milliseconds.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import time

VERSION = "2.47"

# klog's flags: upstream accepts them on every subcommand; they are ignored here.
_KLOG = {"v": "int", "vmodule": "str", "logtostderr": "bool", "alsologtostderr": "bool",
         "log_dir": "str", "log_file": "str", "log_file_max_size": "int",
         "skip_headers": "bool", "skip_log_headers": "bool", "add_dir_header": "bool",
         "one_output": "bool", "stderrthreshold": "str", "log_backtrace_at": "str"}


class UsageError(Exception):
    """Bad command line: the message is what cobra would print after ``Error: ``."""


def log(msg: str) -> None:
    """Go's log package format, to stderr (the container log)."""
    sys.stderr.write(time.strftime("%Y/%m/%d %H:%M:%S ") + msg + "\n")
    sys.stderr.flush()


# --- flags and Go values ------------------------------------------------------------------

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                   "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """A Go duration (``2s``, ``1m30s``, ``500ms``, ``0``) in seconds."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if s == "0":
        return 0.0
    total, pos = 0.0, 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m:
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not s:
        raise ValueError(f'time: invalid duration "{text}"')
    return sign * total


def _convert(kind: str, value: str) -> object:
    if kind == "int":
        return int(value, 0) if value.lower().startswith(("0x", "0o", "0b")) else int(value)
    if kind == "duration":
        return parse_duration(value)
    if kind == "bool":
        if value in ("1", "t", "T", "true", "TRUE", "True"):
            return True
        if value in ("0", "f", "F", "false", "FALSE", "False"):
            return False
        raise ValueError(f'strconv.ParseBool: parsing "{value}": invalid syntax')
    return value


def parse_flags(argv: list[str], spec: dict[str, tuple[str, object]]
                ) -> tuple[dict[str, object], list[str]]:
    """Go-style flags (name -> (kind, default)); returns values (``-`` -> ``_``) and args."""
    values = {name.replace("-", "_"): default for name, (_, default) in spec.items()}
    kinds = {name: kind for name, (kind, _) in spec.items()} | _KLOG
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positional.extend(argv[i:])
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if name not in kinds:
            raise UsageError(f"unknown flag: --{name}")
        kind = kinds[name]
        if kind == "bool" and not eq:
            value = "true"
        elif not eq:
            if i >= len(argv):
                raise UsageError(f"flag needs an argument: --{name}")
            value, i = argv[i], i + 1
        try:
            converted = _convert(kind, value)
        except ValueError as exc:
            raise UsageError(f'invalid argument "{value}" for "--{name}" flag: {exc}') from exc
        if name in spec:
            values[name.replace("-", "_")] = converted
    return values, positional


def hostname() -> str:
    return socket.gethostname()


def go_addr(addr: tuple) -> str:
    """A socket address as Go prints it: ``IP:port``, ``[IPv6]:port``; v4-mapped as v4."""
    host, port = addr[0], addr[1]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def go_json(obj: object) -> str:
    """json.Marshal's output: compact, HTML characters escaped."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def split_host_port(dest: str) -> tuple[str, str]:
    """Go's net.SplitHostPort."""
    if dest.startswith("["):
        end = dest.find("]")
        if end < 0:
            raise ValueError(f"address {dest}: missing ']' in address")
        if not dest[end + 1:].startswith(":"):
            raise ValueError(f"address {dest}: missing port in address")
        return dest[1:end], dest[end + 2:]
    if ":" not in dest:
        raise ValueError(f"address {dest}: missing port in address")
    host, port = dest.rsplit(":", 1)
    if ":" in host:
        raise ValueError(f"address {dest}: too many colons in address")
    return host, port


def resolve(host: str, port: str, kind: int) -> tuple:
    """The address Go's Resolve{TCP,UDP}Addr picks: the first IPv4 one, else the first.

    Raises ValueError with Go's wording (``lookup HOST: no such host``)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=kind)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_SERVICE:
            net = "udp" if kind == socket.SOCK_DGRAM else "tcp"
            raise ValueError(f"lookup {net}/{port}: unknown port") from None
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)):
            raise ValueError(f"lookup {host}: no such host") from None
        raise ValueError(f"lookup {host}: {str(exc.strerror).lower()}") from None
    except UnicodeError as exc:
        raise ValueError(f"lookup {host}: {exc}") from None
    info = next((i for i in infos if i[0] == socket.AF_INET), infos[0])
    return info[0], info[4]


def errtext(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "i/o timeout"
    return (exc.strerror or str(exc)).lower()


# --- sockets --------------------------------------------------------------------------------

def bound_socket(kind: int, port: int, host: str = "") -> socket.socket:
    """A socket bound to ``host`` and ``port``; no host: every address, dual stack when the
    pod has IPv6 (as Go's ``:port``), else every IPv4 address."""
    if not host:
        sock = socket.socket(socket.AF_INET6, kind)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("::", port))
            return sock
        except OSError:
            sock.close()
            host = "0.0.0.0"
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock

