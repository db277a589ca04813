"""A weave-like data plane: a ``weave`` bridge per node, one router per node peering with
the others over TCP (port 6783, peer list gossiped), Ethernet frames carried between
nodes in UDP (the sleeve, port 6784), optionally sealed with NaCl secretbox, and IPAM that
splits one range (10.32.0.0/12) among the peers."""
