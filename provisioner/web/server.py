"""The production WSGI server: waitress, with zero-copy file sends.

waitress streams a `wsgi.file_wrapper` body from its own event loop (no
thread per download, slow clients cost nothing), but it copies each chunk
through Python. `SendfileChannel` hands such a body to the kernel with
os.sendfile instead, and sends the header before it with MSG_MORE so that
both leave in one segment; other output (small bodies) is sent as waitress
does. Image artifacts are hundreds of MB, so the copy matters.

A request for a published, verified blob is answered by the channel itself
on the event loop (web/fast_blobs.py), without the worker-thread hand-off
and the WSGI stack, which is most of what a small Range request costs.
"""

from __future__ import annotations

import errno
import os
import socket
import time

from waitress.buffers import OverflowableBuffer, ReadOnlyFileBasedBuffer
from waitress.channel import HTTPChannel
from waitress.server import create_server
from werkzeug.http import http_date

from provisioner.web.simple_request import SimpleRequest, parse_simple_request

_DISCONNECTED = {errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNABORTED, errno.EPIPE, errno.EBADF}
SENDFILE_CHUNK = 4 << 20


class SendfileChannel(HTTPChannel):
    def received(self, data):
        fast = getattr(self.server, "fast_blobs", None)
        if fast is not None and self.request is None and not self.requests:
            request = parse_simple_request(data)
            if request is not None and self._serve_blob(fast, request):
                return True
        return super().received(data)

    def _serve_blob(self, fast, request: SimpleRequest) -> bool:
        """Answer a blob request here, on the event loop, if the fast path
        can (web/fast_blobs.py); False leaves it to waitress and Flask."""
        with self.requests_lock:
            # No queued request and (waitress reads nothing while output is
            # pending) no response in flight: ours goes out in order.
            if self.requests or self.will_close or self.close_when_flushed:
                return False
            try:
                got = fast.open(request.method, request.path, if_none_match=request.if_none_match,
                                if_range=request.if_range, range_header=request.range)
            except Exception:
                self.logger.exception("fast path for %s failed; the app answers instead", request.path)
                return False
            if got is None:
                return False
            reply, f = got
            lines = [f"HTTP/1.1 {reply.status} {reply.reason}"]
            lines += [f"{name}: {value}" for name, value in reply.headers]
            lines += [f"Date: {_now()}", f"Server: {self.adj.ident}"]
            if request.close:
                lines.append("Connection: close")
                self.close_when_flushed = True
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            with self.outbuf_lock:
                if self.outbufs[-1].buf is not None:
                    # A buffer past its in-memory stage never shrinks while
                    # it is the last one: start a new one, as waitress does
                    # for each response.
                    self.outbufs.append(OverflowableBuffer(self.adj.outbuf_overflow))
                self.outbufs[-1].append(head)
                self.total_outbufs_len += len(head)
                if f is not None:
                    self.outbufs.append(FileRange(f.fileno(), reply.start, reply.length, owner=f))
                    self.outbufs.append(OverflowableBuffer(self.adj.outbuf_overflow))
                    self.total_outbufs_len += reply.length
                # The next response (ours or waitress') starts a new buffer.
                self.current_outbuf_count = self.adj.outbuf_high_watermark
                # Send now rather than on the loop's next turn: for a small
                # range that turn is a good part of the cost.
                self._flush_some(do_close=False)
        return True

    def _flush_some(self, do_close=True):
        # Same contract as waitress' own: send what the socket takes now,
        # drop finished buffers (keeping the last, writable one), and say
        # whether anything was sent.
        sent = 0
        while True:
            outbuf = self.outbufs[0]
            if type(outbuf) is ReadOnlyFileBasedBuffer and _has_fd(outbuf.file):
                # A WSGI app's wsgi.file_wrapper body, positioned at its start.
                outbuf = self.outbufs[0] = FileRange.of_file(outbuf.file, outbuf.remain)
            if type(outbuf) is FileRange:
                if outbuf.remain > 0:
                    n = self._sendfile(outbuf, do_close)
                    if n <= 0:
                        break
                    sent += n
                    continue
            else:
                pending = outbuf.__len__()
                if pending > 0:
                    # A file body follows: hold the header back until
                    # sendfile adds to it, one segment as nginx's
                    # tcp_nopush, not two wake-ups for the client.
                    more = len(self.outbufs) > 1 and type(self.outbufs[1]) in (FileRange, ReadOnlyFileBasedBuffer)
                    n = self._send(outbuf.get(self.sendbuf_len), do_close, socket.MSG_MORE if more else 0)
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

    def _send(self, data: bytes, do_close: bool, flags: int) -> int:
        # wasyncore's send(), with flags.
        try:
            return self.socket.send(data, flags)
        except OSError as exc:
            if exc.errno == errno.EWOULDBLOCK:
                return 0
            if exc.errno in _DISCONNECTED:
                if do_close:
                    self.handle_close()
                return 0
            raise

    def _sendfile(self, body: FileRange, do_close: bool) -> int:
        try:
            sent = os.sendfile(self.socket.fileno(), body.fd, body.offset, min(body.remain, SENDFILE_CHUNK))
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
            self.total_outbufs_len -= body.remain
            body.remain = 0
            self.will_close = True
            return -1
        body.offset += sent
        body.remain -= sent
        self.total_outbufs_len -= sent
        return sent


class FileRange:
    """An output buffer that is `remain` bytes of an open file from
    `offset`, sent with sendfile. It owns the file object: closing it (or
    losing it, when a channel is dropped unclosed) closes the file."""

    def __init__(self, fd: int, offset: int, remain: int, *, owner) -> None:
        self.fd, self.offset, self.remain, self._owner = fd, offset, remain, owner

    @classmethod
    def of_file(cls, f, remain: int) -> FileRange:
        return cls(f.fileno(), f.tell(), remain, owner=f)

    def __len__(self) -> int:
        return self.remain

    def close(self) -> None:
        self._owner.close()
        self.fd = -1


_date = [0, ""]  # [second, its HTTP date]


def _now() -> str:
    # Formatting the date costs more than the rest of a header; it changes
    # once a second.
    now = int(time.time())
    if _date[0] != now:
        _date[:] = [now, http_date(now)]
    return _date[1]


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
            if isinstance(channel, HTTPChannel):
                # handle_close, not close: it also closes the output
                # buffers, hence the files of downloads still in flight.
                channel.handle_close()
            else:
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
    finally:
        if getattr(server, "fast_blobs", None) is not None:
            server.fast_blobs.close()


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
    server.fast_blobs = getattr(app, "extensions", {}).get("provisioner.fast_blobs")
    return server
