#!/usr/bin/env python3
"""Holds N slow client connections open against a gateway for D seconds, bounded in count and
time: a third trickle a request head one byte a second (slowloris; reconnecting when the
gateway cuts them at header_read_timeout), a third send a head and then a body one byte a
second, a third make one request and then stay idle (keep-alive; reconnecting when cut).
Prints how many connections it opened and how many the gateway cut.

    slow-clients.py HOST PORT N SECONDS
"""
import asyncio
import sys

HOST, PORT, N, SECONDS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
opened = 0
cut = 0


async def one(kind: int, deadline: float) -> None:
    global opened, cut
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        try:
            r, w = await asyncio.open_connection(HOST, PORT)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        opened += 1
        try:
            if kind == 0:  # slowloris: a head that never ends
                for b in b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 10_000:
                    if loop.time() >= deadline:
                        return
                    w.write(bytes([b]))
                    await w.drain()
                    await asyncio.sleep(1.0)
            elif kind == 1:  # slow body
                w.write(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
                for _ in range(100_000):
                    if loop.time() >= deadline:
                        return
                    w.write(b"x")
                    await w.drain()
                    await asyncio.sleep(1.0)
            else:  # one request, then idle
                w.write(b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n")
                await w.drain()
                await r.read(65536)
                while loop.time() < deadline:
                    data = await asyncio.wait_for(r.read(1), timeout=max(0.1, deadline - loop.time()))
                    if not data:
                        break
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            if loop.time() < deadline:
                cut += 1
            w.close()


async def main() -> None:
    deadline = asyncio.get_running_loop().time() + SECONDS
    await asyncio.gather(*(one(i % 3, deadline) for i in range(N)))
    print(f"slow clients: {N} held for {SECONDS:.0f}s, {opened} connections opened, {cut} cut by the gateway")


asyncio.run(main())
