#!/usr/bin/env python3
"""Host-side pokes at a hybrid-vsock Unix socket (vhost-device-vsock's --uds-path). AF_UNIX only:
this never opens AF_VSOCK (the machine's own vsock is not ours).

  hybrid-vsock.py connect UDS PORT [--send TEXT] [--tries N] [--timeout S]
      Host -> guest: connect to UDS, send "CONNECT PORT\\n", read "OK <hostport>\\n" byte by byte,
      then (with --send) send TEXT + "\\n" and print the guest's reply line. Retries the handshake
      with backoff when the connection is closed before OK (vhost-device-vsock 0.3.0 sometimes drops
      a fresh connection before reading the CONNECT line; nothing reached the guest then).
      Exit 0 on OK (and a reply), 3 if no try got OK (nothing listens on PORT in the guest, or the
      device is not up), 1 on other errors.
  hybrid-vsock.py connect UDS PORT --expect-refused [--tries N]
      Exit 0 if no try got OK (the guest refused), 1 if one did.
  hybrid-vsock.py serve UDS PORT [--count N] [--timeout S]
      Guest -> host: listen on UDS_PORT (where the device connects for a guest's connect to CID 2,
      PORT), accept N connections (default 1), read a line from each and answer "host-echo: LINE\\n".
      Prints "SERVE-LISTENING path" once listening and "SERVE-GOT LINE" per connection.
"""

import argparse
import os
import socket
import sys
import time


def handshake(uds, port, timeout):
    """One try: returns the connected socket after OK, or None if closed before OK."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(uds)
        s.sendall(f"CONNECT {port}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            b = s.recv(1)  # byte by byte: what follows OK belongs to the guest's stream
            if not b:
                raise ConnectionResetError("closed before OK")
            line += b
            if len(line) > 64:
                raise ValueError(f"bad handshake reply {line!r}")
        if not line.startswith(b"OK "):
            raise ValueError(f"bad handshake reply {line!r}")
        return s, line.decode().strip()
    except (ConnectionResetError, BrokenPipeError, ConnectionRefusedError, FileNotFoundError, socket.timeout) as e:
        s.close()
        return None, f"{type(e).__name__}: {e}"


def cmd_connect(a):
    delay = 0.1
    last = ""
    for i in range(1, a.tries + 1):
        s, info = handshake(a.uds, a.port, a.timeout)
        if s is not None:
            if a.expect_refused:
                print(f"connect {a.port}: got {info} on try {i}, expected a refusal", file=sys.stderr)
                s.close()
                return 1
            print(f"HANDSHAKE {info} (try {i})")
            if a.send is not None:
                s.sendall((a.send + "\n").encode())  # only after OK: bytes sent with CONNECT can be lost
                reply = b""
                while not reply.endswith(b"\n"):
                    b = s.recv(4096)
                    if not b:
                        break
                    reply += b
                print(f"REPLY {reply.decode(errors='replace').strip()}")
                s.close()
                return 0 if reply else 1
            s.close()
            return 0
        last = info
        print(f"connect {a.port}: try {i}/{a.tries}: no OK ({info})", file=sys.stderr)
        if i < a.tries:
            time.sleep(delay)
            delay = min(delay * 1.6, 1.5)
    if a.expect_refused:
        print(f"REFUSED {a.port} ({last})")
        return 0
    print(f"connect {a.port}: no OK after {a.tries} tries ({last})", file=sys.stderr)
    return 3


def cmd_serve(a):
    path = f"{a.uds}_{a.port}"
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    srv.settimeout(a.timeout)
    print(f"SERVE-LISTENING {path}", flush=True)
    try:
        for _ in range(a.count):
            c, _ = srv.accept()
            c.settimeout(a.timeout)
            line = b""
            while not line.endswith(b"\n"):
                b = c.recv(1)
                if not b:
                    break
                line += b
            text = line.decode(errors="replace").strip()
            c.sendall(f"host-echo: {text}\n".encode())
            c.close()
            print(f"SERVE-GOT {text}", flush=True)
    except socket.timeout:
        print(f"serve {path}: no connection within {a.timeout} s", file=sys.stderr)
        return 1
    finally:
        srv.close()
        os.unlink(path)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("connect")
    c.add_argument("uds")
    c.add_argument("port", type=int)
    c.add_argument("--send")
    c.add_argument("--tries", type=int, default=12)
    c.add_argument("--timeout", type=float, default=5.0)
    c.add_argument("--expect-refused", action="store_true")
    s = sub.add_parser("serve")
    s.add_argument("uds")
    s.add_argument("port", type=int)
    s.add_argument("--count", type=int, default=1)
    s.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_args()
    return cmd_connect(a) if a.cmd == "connect" else cmd_serve(a)


if __name__ == "__main__":
    sys.exit(main())
