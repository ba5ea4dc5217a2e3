"""Binding and running: loopback unless told otherwise, one clear line when the port is taken.

fmnist binds the socket itself and hands it to uvicorn, so a bad host or a busy port is
reported before the model loads, and `--port 0` can report the port the OS picked.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from fmnist.errors import FmnistError, UsageError


def is_loopback(host: str) -> bool:
    """True when every address `host` resolves to is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def bind_socket(host: str, port: int, *, allow_remote: bool = False) -> socket.socket:
    if not is_loopback(host) and not allow_remote:
        raise UsageError(
            f"--host {host} is not a loopback address; the server would be reachable from the network. "
            "Pass --allow-remote to do that on purpose"
        )
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: cannot resolve ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise FmnistError(f"port {port} on {host} is already in use; choose another with --port") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise FmnistError(
                f"not allowed to bind {host}:{port} ({exc.strerror}); ports below 1024 need privileges"
            ) from None
        raise FmnistError(f"cannot bind {host}:{port} ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app, *, access_log: bool = False):
    try:
        import uvicorn
    except ImportError:
        raise FmnistError("serving needs uvicorn and fastapi: pip install 'fmnist[serve]'") from None
    # uvloop/httptools when installed ("auto"): several times less per-request CPU than asyncio/h11.
    return uvicorn.Config(
        app, loop="auto", http="auto", log_level="warning", access_log=access_log, lifespan="off",
        server_header=False, timeout_keep_alive=30, backlog=2048,
    )  # fmt: skip


def run_server(app, sock: socket.socket, *, access_log: bool = False) -> None:
    """Serve until Ctrl-C / SIGTERM on an already-bound socket."""
    import uvicorn

    server = uvicorn.Server(uvicorn_config(app, access_log=access_log))
    server.run(sockets=[sock])
