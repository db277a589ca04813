"""``knetlab ingress show|address|tls-secret``: the ingress controller from the shell.

    knetlab ingress show [-o json]     the routing table the controller derived
    knetlab ingress address [--https]  ADDRESS:PORT where clients reach nginx
    knetlab ingress tls-secret NAME --host H [--host H2] [-n NS]
                                       a kubernetes.io/tls Secret (self-signed) as YAML

``show`` and ``address`` read what the controller wrote after its last sync
(``daemons/ingress-nginx/controller/routes.json`` in the lab's run dir), so they show exactly
what nginx serves, not a second derivation.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from knetlab.errors import KnetlabError


def add_commands(sub: Any, cluster_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    ing = sub.add_parser("ingress", help="the ingress controller: routes, address, TLS")
    acts = ing.add_subparsers(metavar="ACTION", dest="action", required=True)
    show = acts.add_parser("show", help="the routing table the controller derived")
    show.add_argument("-o", "--output", choices=["table", "json"], default="table")
    cluster_arg(show)
    addr = acts.add_parser("address", help="ADDRESS:PORT where clients reach nginx")
    addr.add_argument("--https", action="store_true", help="the HTTPS port instead")
    cluster_arg(addr)
    tls = acts.add_parser("tls-secret", help="print a self-signed kubernetes.io/tls Secret")
    tls.add_argument("name")
    tls.add_argument("--host", action="append", required=True, help="a DNS name (repeat)")
    tls.add_argument("-n", "--namespace", default="default")
    ing.set_defaults(func=cmd_ingress)


def _table(cluster: str | None) -> dict[str, Any]:
    from knetlab.addons.ingress import read_table
    from knetlab.rundir import running_lab
    rd, _ = running_lab(cluster)
    table = read_table(rd)
    if not table:
        raise KnetlabError(f"lab {rd.cluster} has no ingress controller running (topology "
                           "`ingress: {enabled: false}`, no Kubernetes, or still starting)")
    return table


def format_table(table: dict[str, Any]) -> str:
    rows = [("HOST", "PATH", "TYPE", "TLS", "BACKEND", "ENDPOINTS", "INGRESS")]
    for r in table.get("routes", []):
        eps = ",".join(r["endpoints"]) if r["endpoints"] else (
            "503: " + r["problem"] if r["problem"] else "-")
        rows.append((r["host"], r["path"], r["pathType"] or "-", "yes" if r["tls"] else "-",
                     r["backend"], eps, r["ingress"] or "-"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) + "  " +
             str(row[-1]) for row in rows]
    for key, problems in sorted(table.get("problems", {}).items()):
        for reason, message in problems:
            lines.append(f"! ingress {key}: {reason}: {message}")
    if table.get("lastError"):
        lines.append(f"! {table['lastError']}")
    lines.append(f"(nginx reloads: {table.get('reloads', 0)}, last sync {table.get('syncedAt')})")
    return "\n".join(lines)


def cmd_ingress(args: argparse.Namespace) -> int:
    if args.action == "tls-secret":
        import yaml

        from knetlab.addons.ingress.certs import tls_secret
        print(yaml.safe_dump(tls_secret(args.name, args.host, args.namespace),
                             sort_keys=False), end="")
        return 0
    table = _table(args.cluster)
    if args.action == "show":
        print(json.dumps(table, indent=2) if args.output == "json" else format_table(table))
        return 0
    key = "https" if args.https else "http"
    for a in table.get("addresses", []):
        print(f"{a['ip']}:{a[key]}")
    return 0
