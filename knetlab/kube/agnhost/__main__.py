"""agnhost's command line: ``python -m knetlab.kube.agnhost SUBCOMMAND [flags]``.

Each subcommand's module is imported only when it runs (fast container start)."""

from __future__ import annotations

import importlib
import sys

from knetlab.kube.agnhost import VERSION, UsageError

#: subcommand -> (module, function, one line of help)
COMMANDS = {
    "connect": ("tools", "connect", "Attempts a TCP or UDP connection and returns useful errors"),
    "dns-server-list": ("tools", "dns_server_list", "Prints the host's DNS Server list"),
    "dns-suffix": ("tools", "dns_suffix", "Prints the host's DNS suffix list"),
    "etc-hosts": ("tools", "etc_hosts", "Prints the host's /etc/hosts file"),
    "liveness": ("servers", "liveness", "Starts a server that is alive for 10 seconds"),
    "netexec": ("netexec", "netexec", "Creates HTTP and UDP servers with various endpoints"),
    "pause": ("tools", "pause", "Pauses the execution"),
    "porter": ("servers", "porter", "Serves requested data on ports specified in ENV variables"),
    "serve-hostname": ("servers", "serve_hostname", "Serves the hostname"),
}


def usage() -> str:
    lines = ["knetlab's agnhost (compatible with agnhost " + VERSION + ")", "",
             "Usage:", "  agnhost [command] [flags]", "", "Available Commands:"]
    lines += [f"  {name:<16} {short}" for name, (_, _, short) in COMMANDS.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("help", "-h", "--help"):
        sys.stdout.write(usage())
        return 0
    if args[0] == "--version":
        print(f"agnhost version {VERSION} (knetlab)")
        return 0
    if args[0] not in COMMANDS:
        sys.stderr.write(f'Error: unknown command "{args[0]}" for "agnhost"\n{usage()}')
        return 1
    module, func, short = COMMANDS[args[0]]
    if "-h" in args[1:] or "--help" in args[1:]:
        print(f"{short}\n\nUsage:\n  agnhost {args[0]} [flags]")
        return 0
    try:
        fn = getattr(importlib.import_module(f"knetlab.kube.agnhost.{module}"), func)
        return fn(args[1:])
    except UsageError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
