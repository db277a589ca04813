"""Data planes; importing this package registers every one of them by name."""

from knetlab.overlays import static_routes  # noqa: F401
