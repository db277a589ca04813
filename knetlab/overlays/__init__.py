"""Data planes; importing this package registers every one of them by name."""

from knetlab.overlays import calico, flannel, static_routes  # noqa: F401
from knetlab.overlays.ovs import backend as ovs_backend  # noqa: F401
