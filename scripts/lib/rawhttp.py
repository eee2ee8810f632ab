#!/usr/bin/env python3
"""Send hand-made HTTP/1.1 bytes that curl will not produce (a truncated
chunked body, a body shorter than its Content-Length, a stalled upload) and
print the status code of the answer, or 000 when the server closed the
connection without one. The raw answer goes to --out.

    rawhttp.py HOST:PORT --out FILE [--half-close] [--hold SECONDS] [--timeout SECONDS] < request-bytes

--half-close  shut down our sending side after the bytes (the server reads EOF)
--hold        keep the connection open and silent this long before reading
              (for a stalled body; 0 = read at once)
--timeout     how long to wait for the answer (default 20 s)
Only loopback addresses are accepted.
"""

import argparse
import socket
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("addr")
    p.add_argument("--out", required=True)
    p.add_argument("--half-close", action="store_true")
    p.add_argument("--hold", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=20.0)
    a = p.parse_args()
    host, _, port = a.addr.rpartition(":")
    if not host.startswith("127.") and host not in ("localhost", "::1", "[::1]"):
        print("rawhttp.py: only loopback addresses", file=sys.stderr)
        return 2
    data = sys.stdin.buffer.read()
    s = socket.create_connection((host, int(port)), timeout=a.timeout)
    try:
        s.sendall(data)
    except OSError:
        pass  # the server may answer and close before taking every byte
    if a.half_close:
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    if a.hold:
        time.sleep(a.hold)
    got = b""
    deadline = time.monotonic() + a.timeout
    s.settimeout(1.0)
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            if b"\r\n\r\n" in got:
                break  # a complete head and whatever body came with it
            continue
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    s.close()
    with open(a.out, "wb") as f:
        f.write(got)
    status = "000"
    if got.startswith(b"HTTP/1.") and len(got) >= 12:
        status = got[9:12].decode("ascii", "replace")
    print(status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
