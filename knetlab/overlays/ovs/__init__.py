"""Open vSwitch overlays (``ovs-vxlan``, ``ovs-gre``) under an os-ken OpenFlow 1.3 controller.

- ``pipeline``: the OpenFlow tables by name and the pure function computing every flow.
- ``node``: one OVS per node (``br-phy`` owns the uplink and node IP, ``br-int`` the pods).
- ``controller``: the os-ken application that reconciles every ``br-int`` to the pipeline.
- ``backend``: the data plane registered as ``ovs-vxlan`` and ``ovs-gre``.
- ``commands``: ``knetlab flows NODE`` and ``knetlab ofctl NODE ...``.
"""
