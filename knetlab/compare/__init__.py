"""``knetlab compare``: the data planes measured side by side, one method, one run.

- ``planes``: which planes, and the one two-node layout each is brought up on;
- ``measure``: iperf3 throughput, CPU per GB at a fixed rate, round trips, connects, MTU;
- ``rr``: the request/response probe program run inside the pods;
- ``cpu``: exact runtime accounting (cpuacct cgroup, schedstat), never /proc/stat;
- ``run``: the loop over planes, progress lines, raw samples;
- ``report``, ``ranking``, ``charts``: tables, the course's ranking, PNGs;
- ``commands``: the CLI subcommand.
"""
