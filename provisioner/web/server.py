"""The production WSGI server: waitress, with zero-copy file sends.

waitress streams a `wsgi.file_wrapper` body from its own event loop (no
thread per download, slow clients cost nothing), but it copies each chunk
through Python. `SendfileChannel` hands such a body to the kernel with
os.sendfile instead; everything else (headers, small bodies) goes through
waitress unchanged. Image artifacts are hundreds of MB, so the copy matters.
"""

from __future__ import annotations

import errno
import logging
import os
import time

from waitress.buffers import ReadOnlyFileBasedBuffer
from waitress.channel import HTTPChannel
from waitress.server import create_server

log = logging.getLogger("provisioner.http")

_DISCONNECTED = {errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNABORTED, errno.EPIPE, errno.EBADF}
SENDFILE_CHUNK = 4 << 20


class SendfileChannel(HTTPChannel):
    def _flush_some(self, do_close=True):
        # Same contract as waitress' own: send what the socket takes now,
        # drop finished buffers (keeping the last, writable one), and say
        # whether anything was sent.
        sent = 0
        while True:
            outbuf = self.outbufs[0]
            if type(outbuf) is ReadOnlyFileBasedBuffer and _has_fd(outbuf.file):
                pending = outbuf.remain
                if pending > 0:
                    n = self._sendfile(outbuf, do_close)
                    if n <= 0:
                        break
                    sent += n
                    continue
            else:
                pending = outbuf.__len__()
                if pending > 0:
                    n = self.send(outbuf.get(self.sendbuf_len), do_close=do_close)
                    if not n:
                        break
                    outbuf.skip(n, True)
                    self.total_outbufs_len -= n
                    sent += n
                    continue
            if len(self.outbufs) == 1:
                break
            done = self.outbufs.pop(0)
            try:
                done.close()
            except Exception:
                self.logger.exception("Unexpected error when closing an outbuf")
        if sent:
            self.last_activity = time.time()
            return True
        return False

    def _sendfile(self, outbuf: ReadOnlyFileBasedBuffer, do_close: bool) -> int:
        f = outbuf.file
        offset = f.tell()
        try:
            sent = os.sendfile(self.socket.fileno(), f.fileno(), offset, min(outbuf.remain, SENDFILE_CHUNK))
        except BlockingIOError:
            return 0
        except OSError as exc:
            if exc.errno in _DISCONNECTED:
                if do_close:
                    self.handle_close()
                return -1
            raise
        if sent == 0:
            # The file is shorter than promised (truncated under us): close
            # rather than hang the client waiting for bytes that never come.
            self.total_outbufs_len -= outbuf.remain
            outbuf.remain = 0
            self.will_close = True
            return -1
        f.seek(offset + sent)
        outbuf.remain -= sent
        self.total_outbufs_len -= sent
        return sent


def _has_fd(f) -> bool:
    try:
        f.fileno()
        return True
    except (AttributeError, OSError, ValueError):
        return False


def close_server(server) -> None:
    """Stop listening, drop every open connection (idle keep-alives and
    downloads too, which would otherwise keep the loop alive for up to
    channel_timeout) and stop the worker threads."""
    server.close()
    for channel in list(server._map.values()):
        try:
            channel.close()
        except OSError:
            pass
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)


def run_until_closed(server, closing) -> None:
    """Run waitress until `closing` is set and the server closed.

    waitress has no stop call: close_server() from another thread (or a
    signal handler) makes its select loop raise or run dry, which is the
    expected way out once `closing` is set."""
    try:
        server.run()
    except (OSError, ValueError):
        if not closing.is_set():
            raise


def make_server(app, host: str, port: int, *, threads: int = 16):
    server = create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        # Image downloads are long and many firmware clients are slow.
        connection_limit=1000,
        channel_timeout=600,
        ident="provisioner",
        clear_untrusted_proxy_headers=True,
    )
    server.channel_class = SendfileChannel
    return server
