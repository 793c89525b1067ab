"""gunicorn's threaded worker with a read timeout: a client that stops sending mid-request loses its thread.

(And a stop that ends the calls the app proxies to the Temporal UI, web/temporal_ui.py.)

gunicorn's `gthread` worker hands a connection to a thread once its first bytes
arrive, then reads the rest of the request (headers, body) with a blocking socket
and no timeout: a client that sends part of a request and stops held a thread
for as long as it kept the connection open (45 s and more seen, issue 26), and
as many such clients as threads stopped the web app. Here each connection's
socket has SO_RCVTIMEO set (`WEB_READ_TIMEOUT` seconds, 10 by default): a read
that waits longer fails, gunicorn closes the connection, and the thread goes
back to work. Python's own socket timeout can't do it, since gunicorn resets it
(`setblocking(True)`) before every read; the kernel's option stays.

A client that trickles a byte every few seconds still holds a thread for as
long as it keeps going; a buffering front (nginx, a load balancer) in front of
gunicorn ends that too, and is what docs/operations.md recommends in production.
"""

from __future__ import annotations

import logging
import os
import socket
import struct

from gunicorn.workers.gthread import ThreadWorker

READ_TIMEOUT_SECONDS = float(os.environ.get("WEB_READ_TIMEOUT", "10"))


def set_read_timeout(sock: socket.socket, seconds: float) -> None:
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, int((seconds - whole) * 1_000_000)))


class ReadTimeoutThreadWorker(ThreadWorker):
    def handle_exit(self, sig, frame):
        """A graceful stop waits for the requests in flight; the Temporal UI's long polls would hold it."""
        super().handle_exit(sig, frame)
        from web.temporal_ui import interrupt_upstream_calls

        interrupt_upstream_calls()

    def handle(self, conn):
        if not getattr(conn, "read_timeout_set", False):
            set_read_timeout(conn.sock, READ_TIMEOUT_SECONDS)
            conn.read_timeout_set = True
        return super().handle(conn)


class StalledClientFilter(logging.Filter):
    """gunicorn logs a failed read with its traceback; a stalled client's is one short line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.getMessage() == "Socket error processing request." and isinstance(error, BlockingIOError):
            record.msg, record.args, record.exc_info, record.levelno, record.levelname = (
                "Closed a connection that sent nothing for %s s mid-request (WEB_READ_TIMEOUT)",
                (f"{READ_TIMEOUT_SECONDS:g}",),
                None,
                logging.INFO,
                "INFO",
            )
        return True
