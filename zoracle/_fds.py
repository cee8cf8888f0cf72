"""The socket pair between the driver and a process worker, on file descriptors the worker's
standard streams cannot be."""

from __future__ import annotations

import socket

__all__ = ["socket_pair"]


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """``socket.socketpair()`` with both ends on descriptors 3 and up. A driver whose stdout or
    stderr is closed (``python run.py >&- 2>&-``, a daemon, ``sys.stderr.close()``) had those
    numbers free: the pair took 1 and 2, the worker (which inherits 0-2 whatever ``pass_fds`` says)
    had its socket, or the driver's end, as its stdout or stderr, and a print or a warning in the
    oracle wrote into the messages: the run hung waiting for an answer that never came."""
    pair = socket.socketpair()
    return tuple(_above_std(s) for s in pair)


def _above_std(sock: socket.socket) -> socket.socket:
    if sock.fileno() > 2:
        return sock
    import fcntl  # (POSIX only, as process workers are)

    fd = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 3)  # (non-inheritable, as the pair's own)
    moved = socket.socket(sock.family, sock.type, sock.proto, fileno=fd)
    sock.close()  # (the low number free again: the standard stream it stood for stays closed)
    return moved
