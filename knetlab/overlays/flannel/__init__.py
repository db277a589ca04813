"""flannel's data planes (vxlan, udp, host-gw): subnet leases in the lab store and a
flanneld-like agent per node. The backends are in ``backend`` (registered by
``knetlab.dataplane``); the agent imports only what it needs."""
