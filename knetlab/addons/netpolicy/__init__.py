"""NetworkPolicy, Calico-style: a per-node agent renders nftables per-endpoint chains.

Modules, one concept each:
    model.py     API objects -> what one node must enforce (endpoints, policy rules, sets)
    render.py    that model -> the nft script of table ``inet knetlab-policy``
    agent.py     the per-node agent (informers, level-triggered sync) and its Daemon
    addon.py     the Addon: one agent per node
    explain.py   ``knetlab policy explain``: walk a packet through the live table's JSON
    commands.py  the CLI subcommand
"""
