"""ThreadedServer: an HTTP server run in a thread, as the stand-in, the demo app and the gateway run.

    server = ThreadedServer("127.0.0.1", 0, Handler, name="demo-app", app=self)  # binds now
    server.url                     # known before start()
    server.start()
    server.stop()                  # also cuts keep-alive connections and requests in progress

`stop()` is a real stop: it ends the accept loop, closes the listening socket, then shuts
down (SHUT_RDWR) every connection still open, so a keep-alive client gets a connection
error instead of an answer from a server that is supposed to be gone, and waits (bounded)
for the connection threads to finish. A handler in the middle of a request finishes its
work but can no longer answer. Callers that change process state around the server (the
gateway's environment overlay) undo it after `stop()` returns.

`ConnectionTracking` is the part that does this, as a socketserver mixin (the local moto
server uses it too).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time
from http.server import ThreadingHTTPServer

log = logging.getLogger("insightly_connect.local")


class ConnectionTracking:
    """socketserver mixin (put it before ThreadingMixIn): every connection is served by a
    daemon thread that is remembered until the connection ends, so `close_connections()`
    can cut them all."""

    def __init__(self, *args, **kwargs):
        self._open: dict[socket.socket, threading.Thread] = {}
        self._open_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                  name=f"{getattr(self, 'name', type(self).__name__)} connection", daemon=True)
        with self._open_lock:
            self._open[request] = thread
        thread.start()

    def shutdown_request(self, request):
        with self._open_lock:  # not while close_connections() is shutting this socket down
            self._open.pop(request, None)
        super().shutdown_request(request)

    def close_connections(self, timeout: float = 5.0) -> None:
        """Shut down every open connection, then wait up to `timeout` s for their threads."""
        with self._open_lock:
            threads = list(self._open.values())
            for sock in self._open:
                with contextlib.suppress(OSError):  # already closed by the peer
                    sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))


class ThreadedServer(ConnectionTracking, ThreadingHTTPServer):
    """A ThreadingHTTPServer that binds on construction and runs `serve_forever` in a daemon
    thread between `start()` and `stop()`. `app` is there for the handler (`self.server.app`)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, host: str, port: int, handler_class, *, name: str, app: object = None,
                 poll_interval: float = 0.05):
        super().__init__((host, port), handler_class)
        self.name = name
        self.app = app
        self.host = host
        self.poll_interval = poll_interval
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Between start() and stop()."""
        return self._thread is not None

    def start(self) -> ThreadedServer:
        if self._thread is not None or self._stopped:
            raise RuntimeError(f"{self.name}: a server starts once")
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": self.poll_interval},
                                        name=f"{self.name}:{self.url}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close the listening socket, cut every open connection and wait up
        to `timeout` s for their threads. Safe to call twice, and without start()."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout)
            self._thread = None
        self.server_close()
        self.close_connections(timeout)

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # the caller hung up, or stop() cut the connection
            log.debug("%s: connection from %s ended: %s", self.name, client_address, type(error).__name__)
        else:  # only the type: a traceback's values may be codes or tokens
            print(f"[{self.name}] request from {client_address[0]} failed: {type(error).__name__}",
                  file=sys.stderr, flush=True)

