#!/usr/bin/env python3
"""Memory of idle client connections: the gateway's RSS growth per idle HTTP/1.1 keep-alive
connection and per idle h2c connection, each having served one request (GET /gateway/health; for HTTP/1.1
also with a browser's dozen headers).

    cargo build --release -p aegis-tokio --bin aegis
    python3 benches/load/idle-memory.py                 # N=2000, target/release/aegis
    N=5000 AEGIS=target/debug/aegis python3 benches/load/idle-memory.py

One fresh `aegis run --workers 1` per mode (memory freed by one mode would flatter the next),
idle_timeout long enough that nothing is closed while measuring. Everything on 127.0.0.1; the
gateway is killed by PID at the end. Prints one line per mode and the ratio.
"""

import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time

N = int(os.environ.get("N", "2000"))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AEGIS = os.environ.get("AEGIS", os.path.join(ROOT, "target", "release", "aegis"))
DEADLINE = 60.0

CONFIG = """[server]
listen = "127.0.0.1:0"
idle_timeout = "10m"
# Every connection here comes from 127.0.0.1.
max_connections_per_ip = 100000
header_read_timeout = "10m"
[[routes]]
path = "/api"
targets = ["http://127.0.0.1:9"]
"""

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ty, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ty, flags]) + struct.pack(">I", stream) + payload


def literal(name, value):
    # HPACK literal without indexing, new name, no Huffman (names and values under 127 bytes).
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


H2_HELLO = PREFACE + frame(4, 0, 0, b"") + frame(4, 1, 0, b"")
H2_GET = frame(
    1,
    0x5,
    1,
    literal(b":method", b"GET")
    + literal(b":scheme", b"http")
    + literal(b":authority", b"x")
    + literal(b":path", b"/gateway/health"),
)
H1_GET = b"GET /gateway/health HTTP/1.1\r\nHost: x\r\n\r\n"
# The same request with the dozen headers a browser sends ("http1-browser").
H1_BROWSER = (
    b"GET /gateway/health HTTP/1.1\r\nHost: gateway.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Referer: https://gateway.example.com/app/\r\nCookie: session=0123456789abcdef0123456789abcdef\r\n"
    b"Sec-Fetch-Dest: empty\r\nSec-Fetch-Mode: cors\r\nSec-Fetch-Site: same-origin\r\n"
    b"Priority: u=0\r\nCache-Control: no-cache\r\nPragma: no-cache\r\n\r\n"
)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def read_until(s, done):
    buf = b""
    end = time.monotonic() + DEADLINE
    while not done(buf):
        if time.monotonic() > end:
            raise RuntimeError(f"no answer in {DEADLINE}s: {buf[:200]!r}")
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError(f"closed: {buf[:200]!r}")
        buf += chunk
    return buf


def h1_done(buf):
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def h2_done(buf):
    # A frame on stream 1 with END_STREAM.
    i = 0
    while i + 9 <= len(buf):
        length = int.from_bytes(buf[i : i + 3], "big")
        if i + 9 + length > len(buf):
            return False
        ty, flags, stream = buf[i + 3], buf[i + 4], int.from_bytes(buf[i + 5 : i + 9], "big")
        if stream == 1 and ty in (0, 1) and flags & 1:
            return True
        i += 9 + length
    return False


def start_gateway(tmp):
    path = os.path.join(tmp, "aegis.toml")
    with open(path, "w") as f:
        f.write(CONFIG)
    p = subprocess.Popen(
        [AEGIS, "run", "--config", path, "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn"},
        text=True,
    )
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        line = p.stdout.readline()
        if not line:
            break
        if line.startswith("listening on http://"):
            host, port = line.strip()[len("listening on http://") :].rsplit(":", 1)
            return p, (host, int(port))
    p.kill()
    raise RuntimeError("the gateway did not start")


def measure(mode):
    with tempfile.TemporaryDirectory(prefix="aegis-idle-") as tmp:
        p, addr = start_gateway(tmp)
        socks = []
        try:
            # Warm up: the first connection of the mode allocates what every later one shares.
            def one():
                s = socket.create_connection(addr, timeout=DEADLINE)
                if mode == "h2":
                    s.sendall(H2_HELLO + H2_GET)
                    read_until(s, h2_done)
                else:
                    s.sendall(H1_BROWSER if mode == "http1-browser" else H1_GET)
                    read_until(s, h1_done)
                return s

            socks.append(one())
            time.sleep(0.5)  # let the gateway settle before the baseline (a measurement, not a test)
            before = rss_kib(p.pid)
            for _ in range(N):
                socks.append(one())
            time.sleep(1.0)
            after = rss_kib(p.pid)
            return before, after
        finally:
            for s in socks:
                s.close()
            p.kill()
            p.wait()


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, N + 1000)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if not os.path.exists(AEGIS):
        sys.exit(f"{AEGIS} not found: cargo build --release -p aegis-tokio --bin aegis")
    per = {}
    for mode in ("http1", "http1-browser", "h2"):
        before, after = measure(mode)
        per[mode] = (after - before) / N
        print(f"{mode:13}: RSS {before} KiB -> {after} KiB with {N} more idle connections: {per[mode]:.1f} KiB each")
    print(f"h2/http1: {per['h2'] / per['http1']:.2f}")


if __name__ == "__main__":
    main()
