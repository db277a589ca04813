"""Data planes; importing this package registers every one of them by name."""

import knetlab.overlays.flannel  # noqa: F401
from knetlab.overlays import static_routes  # noqa: F401
from knetlab.overlays import calico  # noqa: F401
from knetlab.overlays.ovs import backend as ovs_backend  # noqa: F401
