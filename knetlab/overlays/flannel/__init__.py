"""flannel's data planes (vxlan, udp, host-gw): subnet leases in the lab store and a
flanneld-like agent per node. Importing this package registers the backends."""

from knetlab.overlays.flannel import backend  # noqa: F401
