"""Network guard for tests: only loopback and Unix sockets may be used.

tests/conftest.py puts this folder first on PYTHONPATH, so every Python process started by the
tests (notebook kernels, servers, torchrun workers, the bloomlib CLI) imports it at start-up as
``sitecustomize``; conftest also installs it in the pytest process itself.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import sys

MESSAGE = "network access is blocked in tests (bloomlib is offline-only)"
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class NetworkBlockedError(OSError):
    """Raised instead of touching the network (an OSError, like any other failed connection)."""


def _text(host: object) -> str:
    host = host.decode("idna", "replace") if isinstance(host, bytes) else str(host)
    return host.lower().rstrip(".")


def _is_local_ip(host: str) -> bool:
    ip = ipaddress.ip_address(host.split("%", 1)[0])  # ValueError for names
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def _is_local_name(host: object) -> bool:
    """May ``host`` be looked up? Local names, this machine's name, and IP literals (no lookup;
    connect() then checks the address)."""
    if host is None or host == "":
        return True
    host = _text(host)
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return True
    except ValueError:
        return host in _LOCAL_NAMES or host.endswith(".localhost") or host == socket.gethostname().lower()


def _check(sock: socket.socket, address: object) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # AF_UNIX and friends never leave the machine
    host = _text(address[0] if isinstance(address, tuple) and address else address)
    try:
        local = _is_local_ip(host)
    except ValueError:  # a name, which connect() would resolve itself
        local = host in _LOCAL_NAMES or host.endswith(".localhost")
    if not local:
        raise NetworkBlockedError(f"{MESSAGE}: tried to reach {address!r}")


def install() -> None:
    """Patch the socket module (idempotent)."""
    if getattr(socket, "_bloomlib_netguard", False):
        return

    def guard_socket(real, address_at):  # connect(address), connect_ex(address), sendto(data[, flags], address)
        def method(self, *args):
            if len(args) > address_at:
                _check(self, args[-1])
            return real(self, *args)
        return method

    def guard_lookup(real):  # getaddrinfo(host, ...), gethostbyname(host)
        def lookup(host, *args, **kwargs):
            if not _is_local_name(host):
                raise NetworkBlockedError(f"{MESSAGE}: tried to resolve {host!r}")
            return real(host, *args, **kwargs)
        return lookup

    cls = socket.socket
    cls.connect, cls.connect_ex = guard_socket(cls.connect, 0), guard_socket(cls.connect_ex, 0)
    cls.sendto = guard_socket(cls.sendto, 1)
    socket.getaddrinfo, socket.gethostbyname = guard_lookup(socket.getaddrinfo), guard_lookup(socket.gethostbyname)
    socket._bloomlib_netguard = True


def _chain_next_sitecustomize() -> None:
    """Run the sitecustomize this file shadows, if the interpreter has one."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)


install()
if __name__ == "sitecustomize":
    _chain_next_sitecustomize()
