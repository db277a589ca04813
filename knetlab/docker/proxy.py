"""The userland proxy (``docker-proxy``): forwards one published host ip:port to a container.

dockerd starts one per published port; knetlab starts one per ``127.0.0.0/8`` binding when
the engine runs with ``userland-proxy`` on, since DNAT to a bridge cannot serve loopback
without ``route_localnet``. Same flags as docker-proxy::

    python -m knetlab.docker.proxy -proto tcp -host-ip 127.0.0.1 -host-port 8080 \\
        -container-ip 172.17.0.2 -container-port 80 -ready-file DIR/ready
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from pathlib import Path


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _tcp(args: argparse.Namespace) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            cr, cw = await asyncio.open_connection(args.container_ip, args.container_port)
        except OSError:
            w.close()
            return
        await asyncio.gather(_pipe(r, cw), _pipe(cr, w))

    server = await asyncio.start_server(handle, args.host_ip, args.host_port, reuse_address=True)
    Path(args.ready_file).write_text("ready\n")
    async with server:
        await server.serve_forever()


class _Udp(asyncio.DatagramProtocol):
    """One upstream socket per client address, replies relayed back (as docker-proxy does)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.flows: dict[tuple[str, int], asyncio.DatagramTransport] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        asyncio.get_running_loop().create_task(self._forward(data, addr))

    async def _forward(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr not in self.flows:
            loop = asyncio.get_running_loop()
            back = self.transport

            class Up(asyncio.DatagramProtocol):
                def datagram_received(self, reply: bytes, _a: tuple[str, int]) -> None:
                    back.sendto(reply, addr)  # type: ignore[attr-defined]

            self.flows[addr], _ = await loop.create_datagram_endpoint(
                Up, remote_addr=self.target)
        self.flows[addr].sendto(data)


async def _udp(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: _Udp((args.container_ip, args.container_port)),
                                        local_addr=(args.host_ip, args.host_port),
                                        family=socket.AF_INET)
    Path(args.ready_file).write_text("ready\n")
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(prog="docker-proxy")
    p.add_argument("-proto", default="tcp", choices=["tcp", "udp"])
    p.add_argument("-host-ip", required=True)
    p.add_argument("-host-port", type=int, required=True)
    p.add_argument("-container-ip", required=True)
    p.add_argument("-container-port", type=int, required=True)
    p.add_argument("-ready-file", required=True)
    args = p.parse_args()
    asyncio.run(_tcp(args) if args.proto == "tcp" else _udp(args))


if __name__ == "__main__":
    main()
