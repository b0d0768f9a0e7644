#!/usr/bin/env python3
"""A Hyper-V socket from Python through libhvsock's C ABI (ctypes), then a standard socket.

libhvsock makes the connection (hv_sockaddr_parse, hv_socket, hv_connect); the descriptor it
returns is a plain kernel socket, so it is wrapped in a standard ``socket.socket`` and from then
on everything in Python works on it: ``sendall``/``recv``, ``makefile``, ``selectors``, ``ssl``,
and asyncio, which this example uses to send lines and print the host's replies.

    python3 hvsock_client.py ADDRESS [LINE...]

ADDRESS is ``VM:SERVICE`` as the hvsock CLI writes it (e.g. ``parent:5000``). The library is
found as ``HVSOCK_LIB`` if set, else ``libhvsock.so`` on the loader's path (after ``cargo
cinstall``). The transport is libhvsock's usual one: ``HVSOCK_ENDPOINT``/``HVSOCK_DIR`` through
hvsockd on a host or in a sandbox, ``HVSOCK_TRANSPORT=vsock`` inside a Linux VM.
"""

import asyncio
import ctypes
import ctypes.util
import os
import socket
import sys

AF_HYPERV = 34
HV_PROTOCOL_RAW = 1
HVSOCKET_CONNECT_TIMEOUT = 1


class GUID(ctypes.Structure):
    _fields_ = [
        ("Data1", ctypes.c_uint32),
        ("Data2", ctypes.c_uint16),
        ("Data3", ctypes.c_uint16),
        ("Data4", ctypes.c_uint8 * 8),
    ]


class SOCKADDR_HV(ctypes.Structure):
    _fields_ = [
        ("Family", ctypes.c_uint16),
        ("Reserved", ctypes.c_uint16),
        ("VmId", GUID),
        ("ServiceId", GUID),
    ]


def load_library():
    path = os.environ.get("HVSOCK_LIB") or ctypes.util.find_library("hvsock") or "libhvsock.so"
    lib = ctypes.CDLL(path, use_errno=True)
    lib.hv_last_error.restype = ctypes.c_char_p
    lib.hv_sockaddr_parse.argtypes = [ctypes.c_char_p, ctypes.POINTER(SOCKADDR_HV)]
    lib.hv_socket.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.hv_connect.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
    lib.hv_setsockopt.argtypes = [
        ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32,
    ]
    lib.hv_close.argtypes = [ctypes.c_int]
    return lib


LIB = load_library()


def _error(what):
    errno = ctypes.get_errno()
    return OSError(errno, f"{what}: {os.strerror(errno)} ({LIB.hv_last_error().decode()})")


def connect(address, timeout_ms=None):
    """Connects to ``address`` (``VM:SERVICE``) and returns a connected ``socket.socket``."""
    addr = SOCKADDR_HV()
    if LIB.hv_sockaddr_parse(address.encode(), ctypes.byref(addr)) != 0:
        raise _error("parsing " + address)
    fd = LIB.hv_socket(AF_HYPERV, socket.SOCK_STREAM | socket.SOCK_CLOEXEC, HV_PROTOCOL_RAW)
    if fd < 0:
        raise _error("socket")
    try:
        if timeout_ms is not None:
            ms = ctypes.c_uint32(timeout_ms)
            if LIB.hv_setsockopt(fd, HV_PROTOCOL_RAW, HVSOCKET_CONNECT_TIMEOUT,
                                 ctypes.byref(ms), ctypes.sizeof(ms)) != 0:
                raise _error("setsockopt")
        if LIB.hv_connect(fd, ctypes.byref(addr), ctypes.sizeof(addr)) != 0:
            raise _error("connect to " + address)
    except BaseException:
        LIB.hv_close(fd)
        raise
    # From here on it is a plain socket: Python owns the descriptor.
    return socket.socket(fileno=fd)


async def converse(sock, lines):
    reader, writer = await asyncio.open_connection(sock=sock)
    for line in lines:
        writer.write(line.encode() + b"\n")
        await writer.drain()
        reply = await asyncio.wait_for(reader.readline(), timeout=10)
        print(reply.decode().rstrip("\n"), flush=True)
    writer.close()
    await writer.wait_closed()


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        sock = connect(sys.argv[1], timeout_ms=5000)
    except OSError as e:
        print(f"hvsock_client: {e.strerror}", file=sys.stderr)
        return 1
    print(f"connected: {sock.family!r} {sock.type!r}", file=sys.stderr)
    asyncio.run(converse(sock, sys.argv[2:] or ["hello"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
