"""``python -m knetlab.addons.kubeproxy``: the per-node agent (see agent.py)."""

import sys

from knetlab.addons.kubeproxy.agent import main

sys.exit(main())
