"""Docker networking on a knetlab node, without a Docker engine.

What dockerd would program, with real kernel objects inside the node's namespace: the
``docker0`` bridge, veth pairs, Docker's iptables chain layout (nat ``DOCKER``, filter
``DOCKER-USER``, ``DOCKER-FORWARD``, ``DOCKER-ISOLATION-STAGE-1/2``), the userland proxy
for ``127.0.0.1`` publishing, and the CNM objects (network, endpoint, sandbox) with the
bridge, macvlan and overlay drivers. A container is a network namespace held by a
Mininet host, with its command running in it.

Modules: ``ports`` (publish specs, allocation), ``rules`` (render + apply the ruleset),
``drivers`` (bridge, macvlan, overlay), ``engine`` (containers and CNM objects per node),
``proxy`` (the userland proxy program), ``execute`` (Docker's command line run on an
engine; the Cluster owns the engines: ``Cluster.docker``), ``cli`` (``knetlab docker NODE
...``, which only sends the argv to the lab).
"""
