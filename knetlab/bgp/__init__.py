"""BGP for Calico-style data planes: ExaBGP speakers, route installer, reflectors, BIRD.

- ``exabgp``: the ExaBGP daemon (one class), its config rendered from a template.
- ``messages``: ExaBGP's JSON API messages parsed into events.
- ``kernel``: routes learned over BGP, kept per peer, applied to a namespace's kernel.
- ``installer``: the API program behind a node's ExaBGP (announce nothing, install all).
- ``reflector``: the API program that makes ExaBGP a route reflector (RFC 4456).
- ``bird``: BIRD 2 as a route reflector.
- ``status``: ``knetlab bgp status/routes`` views; ``commands``: the CLI.
"""
