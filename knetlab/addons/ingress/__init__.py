"""Ingress on real nginx, in the style of ingress-nginx (the ``ingress`` add-on).

Topology section (every key optional; the section itself turns the controller on)::

    ingress:
      nodes: [node-1]      # where nginx serves (hostNetwork: the node's own addresses);
                           # default: the first node
      httpPort: 80
      httpsPort: 443
      defaultClass: true   # the IngressClass "nginx" is the cluster's default class
      enabled: true        # the default once the section is there (no section: no controller)

What the add-on makes (``addon.py``), as an ingress-nginx install for bare metal has it
(``docs/ingress.md``): the namespace ``ingress-nginx``, the IngressClass ``nginx``
(controller ``k8s.io/ingress-nginx``), the ServiceAccount ``ingress-nginx``, the DaemonSet
``ingress-nginx-controller`` (``hostNetwork: true``, on the nodes labelled
``knetlab.io/ingress=true``: the chosen ones),
and, when kube-proxy is an add-on of the lab, the Service
``ingress-nginx/ingress-nginx-controller`` (LoadBalancer when the topology has
``loadBalancerCIDR``, else NodePort) whose EndpointSlice the leader keeps on the nginx nodes.

The kubelets run the pods; each pod (``pod.py``) runs nginx in the node's namespace and the
controller (``controller.py``: ``model.py`` -> ``render.py`` -> ``nginx -t`` -> SIGHUP), an
in-cluster API client reaching the API through the ``kubernetes`` Service. Their files live
in the lab's run dir, ``ingress-nginx/<node>/`` (``routes.json`` is what ``knetlab ingress
show`` prints).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from knetlab.rundir import RunDir


def state_root(rundir: RunDir) -> Path:
    """Where the controller pods keep nginx's files, one dir per node."""
    return rundir.path / "ingress-nginx"


def read_table(rundir: RunDir) -> dict[str, Any]:
    """What a controller derived last (its ``routes.json``, the newest of the nodes'), or {}
    before the first sync."""
    files = sorted(state_root(rundir).glob("*/routes.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(files):
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return {}
