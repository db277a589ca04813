"""``python -m knetlab.addons.lbspeaker``: the per-node LoadBalancer speaker (agent.py)."""

import sys

from knetlab.addons.lbspeaker.agent import main

sys.exit(main())
