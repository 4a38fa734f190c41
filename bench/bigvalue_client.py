#!/usr/bin/env python3
"""One big SET or GET over RESP, streamed: the value never sits whole in
this process, so several clients at once stay cheap. Used by bigvalue.sh.

usage: bench/bigvalue_client.py set PORT KEY FILE
       bench/bigvalue_client.py get PORT KEY
prints "OK SECONDS" (set) or "SHA256 SECONDS" (get); on an error reply or a
broken connection "FAIL SECONDS reason" and exit status 1. 127.0.0.1 only;
every socket operation is bounded by TIMEOUT_S (60).
"""
import hashlib
import os
import socket
import sys
import time

TIMEOUT_S = 60
CHUNK = 1 << 20


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s, s.makefile("rb", buffering=CHUNK)


def bulk(b):
    return b"$%d\r\n%s\r\n" % (len(b), b)


def read_line(f):
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed by the proxy")
    return line[:-2]


def do_set(port, key, path):
    size = os.path.getsize(path)
    s, f = connect(port)
    t0 = time.monotonic()
    s.sendall(b"*3\r\n" + bulk(b"SET") + bulk(key) + b"$%d\r\n" % size)
    with open(path, "rb") as src:
        s.sendfile(src)
    s.sendall(b"\r\n")
    line = read_line(f)
    dt = time.monotonic() - t0
    if line != b"+OK":
        raise RuntimeError("reply " + line[:200].decode(errors="replace"))
    return "OK %.3f" % dt


def do_get(port, key):
    s, f = connect(port)
    t0 = time.monotonic()
    s.sendall(b"*2\r\n" + bulk(b"GET") + bulk(key))
    line = read_line(f)
    if not line.startswith(b"$") or line == b"$-1":
        raise RuntimeError("reply " + line[:200].decode(errors="replace"))
    left = int(line[1:])
    h = hashlib.sha256()
    while left > 0:
        chunk = f.read(min(left, CHUNK))
        if not chunk:
            raise ConnectionError("connection closed by the proxy mid-value")
        h.update(chunk)
        left -= len(chunk)
    if f.read(2) != b"\r\n":
        raise RuntimeError("value not terminated by CRLF")
    return "%s %.3f" % (h.hexdigest(), time.monotonic() - t0)


def main():
    op, port, key = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
    t0 = time.monotonic()
    try:
        print(do_set(port, key, sys.argv[4]) if op == "set" else do_get(port, key))
    except (OSError, RuntimeError, ValueError) as e:
        print("FAIL %.3f %s" % (time.monotonic() - t0, str(e) or type(e).__name__))
        sys.exit(1)


if __name__ == "__main__":
    main()
