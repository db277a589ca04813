"""Data planes, one module each; ``knetlab.dataplane.BACKEND_MODULES`` lists them.

Nothing is imported here on purpose: agents and forwarders that run as their own
processes import their own module only, and must not pay for every data plane's imports.
"""
