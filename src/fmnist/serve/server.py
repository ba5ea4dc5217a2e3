"""Binding and running: loopback unless told otherwise, one clear line when the port is taken,
deadlines for idle and half-sent requests.

fmnist binds the socket itself and hands it to uvicorn, so a bad host or a busy port is
reported before the model loads, and `--port 0` can report the port the OS picked.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import socket
import sys

from fmnist.errors import FmnistError, UsageError
from fmnist.serve.limits import DEFAULT_TIMEOUT_S


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


# Linux spreads connections over the sockets that share a port with SO_REUSEPORT, by a hash of
# each connection's addresses. Workers accepting from one shared socket instead race for each
# burst of new connections: the one awake first takes them all, and a load test's 32 keep-alive
# connections then ran on one worker of two in about one round in eight (half the throughput).
# Elsewhere (macOS does not balance, Windows lacks the option) the workers share one socket.
BALANCED_PORT_SHARING = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind_socket(host: str, port: int, *, allow_remote: bool = False, reuse_port: bool = False,
                listen: bool = True) -> socket.socket:  # fmt: skip
    """A TCP socket bound to host:port, listening unless listen=False; errors are one line.

    reuse_port: other sockets of this user may bind the same port (see BALANCED_PORT_SHARING). A
    bound socket that does not listen holds the port without receiving connections."""
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
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
        if listen:
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


def timed_protocol(timeout: float) -> type:
    """uvicorn's HTTP protocol plus the deadlines it lacks.

    uvicorn closes a keep-alive connection that stays idle after a response, but not a new
    connection that never sends anything, nor one that stops half-way through its headers or
    body: each would hold a connection (and a half-read body) forever. Here:

    - a connection that sends nothing for `timeout` seconds is closed;
    - a request's headers must all arrive within `timeout` seconds of their first byte (a
      client dripping one byte at a time gains nothing);
    - a body that goes silent for `timeout` seconds is abandoned;

    a half-sent request gets a 408 answer, then the connection is closed.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    body = json.dumps({"detail": f"request not received completely within {timeout:g} s"}).encode()
    answer = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
              b"content-length: %d\r\nconnection: close\r\n\r\n%s") % (len(body), body)  # fmt: skip

    class TimedProtocol(AutoHTTPProtocol):
        _timer: asyncio.TimerHandle | None = None
        _headers_started = False

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm(idle=True)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.transport.is_closing():
                self._cancel()
                return
            cycle = self.cycle
            if cycle is None or cycle.response_complete:  # the next request's headers are arriving
                if not self._headers_started:
                    self._headers_started = True
                    self._arm(idle=False)
                return
            self._headers_started = False
            if cycle.more_body and not cycle.response_started:
                self._arm(idle=False)  # the body is arriving: the clock restarts with each chunk
            else:
                self._cancel()  # the request is in: the app takes as long as it takes

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel()
            super().connection_lost(exc)

        def _arm(self, idle: bool) -> None:
            self._cancel()
            self._timer = self.loop.call_later(timeout, self._expire, idle)

        def _cancel(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expire(self, idle: bool) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            if self.flow.read_paused:  # the app has not read what arrived: the client is not the slow one
                self._arm(idle)
                return
            cycle = self.cycle
            between_requests = cycle is None or cycle.response_complete
            if not idle and (between_requests or not cycle.response_started):
                self.transport.write(answer)
            self.transport.close()

    return TimedProtocol


def uvicorn_config(app, *, access_log: bool = False, timeout: float = DEFAULT_TIMEOUT_S):
    try:
        import uvicorn
    except ImportError:
        raise FmnistError("serving needs uvicorn and fastapi: pip install 'fmnist[serve]'") from None
    # uvloop/httptools when installed: several times less per-request CPU than asyncio/h11.
    # No WebSocket routes, so no upgrades: a connection stays with the timed protocol throughout.
    return uvicorn.Config(
        app, loop="auto", http=timed_protocol(timeout), ws="none", log_level="warning", access_log=access_log,
        lifespan="off", server_header=False, timeout_keep_alive=timeout, backlog=2048,
    )  # fmt: skip


def run_server(app, sock: socket.socket, *, access_log: bool = False, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Serve until Ctrl-C / SIGTERM on an already-bound socket."""
    import uvicorn

    server = uvicorn.Server(uvicorn_config(app, access_log=access_log, timeout=timeout))
    server.run(sockets=[sock])
