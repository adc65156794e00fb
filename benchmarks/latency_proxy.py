"""A TCP proxy that adds a fixed delay to every request: object-store latency on loopback.

Each read from a client (one HTTP request on a keep-alive connection: obstore, s3fs and
boto send a GET's head in one write) waits ``--delay-ms`` before it is forwarded to the
server; responses come back at once. So every request pays the delay once, as a first
byte from real S3 (tens of milliseconds) does, and requests on separate connections wait
side by side, as they would.

Usage (prints ``PORT`` on stdout once it listens, then serves until killed)::

    python benchmarks/latency_proxy.py --target 127.0.0.1:5000 --delay-ms 20 [--port 0]
"""

from __future__ import annotations

import argparse
import asyncio
import sys


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    try:
        while data := await reader.read(1 << 16):
            if delay:
                await asyncio.sleep(delay)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except (ConnectionError, OSError, RuntimeError):
            pass


async def serve(target: str, port: int, delay: float) -> None:
    host, target_port = target.rsplit(":", 1)

    async def connection(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(host, int(target_port))
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pump(client_reader, server_writer, delay), pump(server_reader, client_writer, 0.0))

    server = await asyncio.start_server(connection, "127.0.0.1", port, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT of the server")
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free one)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.target, args.port, args.delay_ms / 1000))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
