#!/usr/bin/env python3
"""Memory per idle client: RSS of a running ringproxy before and after N
clients connect and each sends one PING (so its buffers were used once),
measured again once the proxy has trimmed idle clients' buffers.

usage: bench/idle_clients.py PID PORT [N]   (127.0.0.1 only, bounded)
"""
import resource
import socket
import sys
import time


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    pid, port = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1024), hard))
    before = rss_kb(pid)
    socks = []
    deadline = time.time() + 120
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        socks.append(s)
    for s in socks:
        buf = b""
        while not buf.endswith(b"\r\n"):
            if time.time() > deadline:
                raise SystemExit("timed out waiting for replies")
            buf += s.recv(64)
        if buf != b"+PONG\r\n":
            raise SystemExit(f"unexpected reply {buf!r}")
    busy = rss_kb(pid)
    time.sleep(3.5)  # the proxy trims idle clients (1 s) and returns memory (once a second)
    idle = rss_kb(pid)
    print(f"clients={n} rss_before_kb={before} rss_after_ping_kb={busy} rss_idle_kb={idle} "
          f"per_client_idle_bytes={(idle - before) * 1024 // n} "
          f"per_client_busy_bytes={(busy - before) * 1024 // n}")
    for s in socks:
        s.close()
    time.sleep(1.5)
    print(f"rss_after_close_kb={rss_kb(pid)}")


if __name__ == "__main__":
    main()
