#!/usr/bin/env python3
"""A student's server for the kit's assignment (docs/assignment.md), in Python.

It proves two things in the test suite: that a server written in another
language, following only the contract, is graded like the kit's own
(`client grade` gives it full marks), and, with `--bug NAME`, that the
grader takes away exactly the points of each typical mistake and no others.

The design is stage 4 of the homework: one thread waits on every socket
with selectors (epoll), file reads run on a pool of reader threads that
wake the loop through a socket pair, a cache of small files is cleared by
SIGHUP, and SIGTERM stops it gracefully.
"""

import argparse
import collections
import datetime
import os
import queue
import selectors
import signal
import socket
import stat
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

MAX_LINE = 4096
CACHE_MAX_FILE = 1 << 20
STOP_GRACE = 5.0

BUGS = [
    "dotdot",          # lets `..` through: serves files outside the root
    "symlinks",        # follows symlinks out of the root
    "iterative",       # one client at a time
    "blocking-reads",  # reads files in the loop thread
    "ignores-sighup",  # never clears its cache
    "dies-on-sighup",  # no SIGHUP handler: the default action kills it
    "leaks-fd",        # one fd more per connection, never closed
    "truncates",       # sends at most 1 MiB of any file
    "misframes",       # answers only the first request of each read
    "never-starts",    # exits at once
    "exits-midway",    # exits after ten requests
    "hangs",           # reads requests, never answers
    "floods",          # writes megabytes to stdout and stderr while serving
    "blocking-fifo",   # opens files without O_NONBLOCK: a FIFO blocks its one loop
    "aborts-on-control",  # abort()s on a control byte in a request
    "one-request",     # answers one request, then reads and never answers again
    # Mistakes made writing the loop:
    "drop-unsent",     # forgets what a non-blocking send did not take
    "blocking-send",   # sends with a blocking call from the loop
    "one-line-per-read",  # answers one line per readable event, leaves the rest in the buffer
    "crlf-split",      # counts a `\r` still waiting for its `\n` against the 4096 bytes
    "lost-wakeup",     # a reader thread finishes but never wakes the loop
]


def too_long(buf, bug):
    """Whether a line with no newline yet is already over the limit; a `\\r`
    at its end may be half of `\\r\\n`, not counted until the next byte."""
    if buf.endswith(b"\r") and bug != "crlf-split":
        return len(buf) - 1 > MAX_LINE
    return len(buf) > MAX_LINE


def log(text):
    print(text, file=sys.stderr, flush=True)


class Refused(Exception):
    def __init__(self, code, reason):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def open_beneath(root_fd, path, bug):
    """The sandbox: an open fd of a regular file under the root, or Refused."""
    if any(b < 0x20 or b == 0x7F for b in path):
        if bug == "aborts-on-control":
            os.abort()
        raise Refused(400, "malformed request")
    if path.startswith(b"/"):
        raise Refused(403, "forbidden")
    parts = [p for p in path.split(b"/") if p not in (b"", b".")]
    for part in parts:
        if part == b".." and bug == "dotdot":
            continue
        if part.startswith(b"."):
            raise Refused(403, "forbidden")
    if not parts:
        raise Refused(403, "forbidden")
    if bug != "symlinks":
        # Symlinks are followed only while they stay inside the root
        # (racy against a tree that changes meanwhile; fine for a lab).
        root = os.path.realpath(f"/proc/self/fd/{root_fd}")
        joined = os.path.join(root, os.fsdecode(b"/".join(parts)))
        real = os.path.realpath(joined)
        escapes = not real.startswith(root + os.sep)
        through_a_link = real != os.path.normpath(joined)
        if escapes and (through_a_link or bug != "dotdot"):
            raise Refused(403, "forbidden")
    current = os.dup(root_fd)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | os.O_CLOEXEC
            flags |= (0 if bug == "blocking-fifo" else os.O_NONBLOCK) if last else os.O_DIRECTORY
            opened = os.open(part, flags, dir_fd=current)
            os.close(current)
            current = opened
        if not stat.S_ISREG(os.fstat(current).st_mode):
            raise Refused(403, "forbidden")
        fd, current = current, None
        return fd
    except FileNotFoundError:
        raise Refused(404, "not found")
    except NotADirectoryError:
        raise Refused(404, "not found")
    except OSError:
        raise Refused(403, "forbidden")
    finally:
        if current is not None:
            os.close(current)


def read_file(fd, delay, bug):
    """Runs on a reader thread (or, with one bug, in the loop): the slow part."""
    try:
        if delay:
            time.sleep(delay)
        size = os.fstat(fd).st_size
        if bug == "truncates":
            size = min(size, 1 << 20)
        chunks = []
        offset = 0
        while offset < size:
            chunk = os.pread(fd, min(1 << 20, size - offset), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.inbuf = bytearray()
        self.out = collections.deque()  # memoryviews still to send
        self.waiting = False            # a read for this connection is running
        self.closing = False            # close once the output is sent
        self.peer_done = False


class Server:
    def __init__(self, args):
        self.args = args
        self.bug = args.bug
        self.delay = args.read_delay_ms / 1000.0
        self.root_fd = os.open(args.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.cache = {}
        self.cache_bytes = 0
        self.generation = 0
        self.requests = 0
        self.leaked = []
        self.stopping = None

    # -- the protocol -------------------------------------------------------

    def clear_cache(self, *_):
        files, size = len(self.cache), self.cache_bytes
        self.cache.clear()
        self.cache_bytes = 0
        self.generation += 1
        log(f"cache cleared: {files} files, {size} bytes")

    def answer(self, path):
        """The reply now (bytes), or an fd to read and its cache key."""
        self.requests += 1
        if self.bug == "exits-midway" and self.requests > 10:
            os._exit(3)
        if len(path) > MAX_LINE:
            raise Refused(414, "request line too long")
        if path in self.cache:
            return self.cache[path], None
        return None, open_beneath(self.root_fd, path, self.bug)

    def finish(self, conn, key, generation, content):
        if len(content) <= CACHE_MAX_FILE and generation == self.generation:
            self.cache[key] = content
            self.cache_bytes += len(content)
        conn.out.append(memoryview(b"OK %d\n" % len(content)))
        conn.out.append(memoryview(content))

    # -- the event loop -----------------------------------------------------

    def run(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.args.port))
        listener.listen(512)
        if self.bug == "iterative":
            return self.run_iterative(listener)
        listener.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(listener, selectors.EVENT_READ, "listener")
        wake_r, self.wake_w = socket.socketpair()
        wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.sel.register(wake_r, selectors.EVENT_READ, "wake")
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        self.install_signals(lambda *_: setattr(self, "stopping", self.stopping or time.monotonic()))
        self.done = queue.Queue()
        self.pool = ThreadPoolExecutor(16)
        print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
        conns = {}
        while True:
            if self.stopping is not None:
                if listener.fileno() >= 0:
                    self.sel.unregister(listener)
                    listener.close()
                    for conn in conns.values():
                        conn.closing = True
                        self.pump(conn)
                busy = [c for c in conns.values() if c.out or c.waiting]
                if not busy or time.monotonic() - self.stopping > STOP_GRACE:
                    os._exit(0)
            # The tick only serves the graceful stop; with the lost wakeup
            # the loop sleeps until an event, as most loops do.
            tick = None if self.bug == "lost-wakeup" and self.stopping is None else 0.25
            for key, events in self.sel.select(timeout=tick):
                if key.data == "listener":
                    self.accept(listener, conns)
                elif key.data == "wake":
                    try:
                        while wake_r.recv(4096):
                            pass
                    except BlockingIOError:
                        pass
                else:
                    self.pump(key.data, readable=bool(events & selectors.EVENT_READ))
                    self.update(key.data, conns)
            while not self.done.empty():
                conn, key, generation, result = self.done.get()
                conn.waiting = False
                if isinstance(result, Refused):
                    conn.out.append(memoryview(b"ERR %d %s\n" % (result.code, result.reason.encode())))
                else:
                    self.finish(conn, key, generation, result)
                self.pump(conn)
                self.update(conn, conns)

    def install_signals(self, on_term):
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        if self.bug == "ignores-sighup":
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        elif self.bug == "dies-on-sighup":
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
        else:
            # Python runs handlers in the main thread between bytecodes, so
            # clearing the cache here is safe (in C it would not be).
            signal.signal(signal.SIGHUP, self.clear_cache)

    def accept(self, listener, conns):
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            if self.bug == "leaks-fd":
                self.leaked.append(os.open("/dev/null", os.O_RDONLY))
            if self.args.service == "time":
                now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                if self.bug != "hangs":
                    try:
                        sock.send(now.encode() + b"\n")
                    except OSError:
                        pass
                    sock.close()
                    continue
            sock.setblocking(False)
            conn = Conn(sock)
            conns[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def pump(self, conn, readable=False):
        """Reads what arrived, answers complete lines, writes what it can."""
        if readable and not conn.peer_done:
            while True:
                try:
                    data = conn.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    conn.peer_done = conn.closing = True
                    conn.out.clear()
                    break
                if not data:
                    conn.peer_done = True
                    break
                conn.inbuf += data
                if self.bug == "misframes":
                    newline = conn.inbuf.find(b"\n")
                    if newline >= 0:
                        del conn.inbuf[newline + 1:]
        lines = 0
        while not conn.waiting and not conn.closing and self.bug != "hangs" and not self.answered_enough():
            if self.bug == "one-line-per-read" and (lines or not readable):
                break
            lines += 1
            newline = conn.inbuf.find(b"\n")
            if newline < 0:
                if too_long(conn.inbuf, self.bug):
                    conn.out.append(memoryview(b"ERR 414 request line too long\n"))
                    conn.closing = True
                break
            line = bytes(conn.inbuf[:newline]).rstrip(b"\r")
            del conn.inbuf[: newline + 1]
            self.request(conn, line)
        if conn.peer_done and not conn.waiting and not conn.inbuf.count(b"\n"):
            conn.closing = True
        while conn.out:
            if self.bug == "blocking-send":
                try:
                    conn.sock.setblocking(True)
                    conn.sock.sendall(conn.out.popleft())
                    conn.sock.setblocking(False)
                except OSError:
                    conn.out.clear()
                    conn.closing = True
                    return
                continue
            try:
                sent = conn.sock.send(conn.out[0])
            except (BlockingIOError, InterruptedError):
                if self.bug == "drop-unsent":
                    conn.out.popleft()
                    continue
                return
            except OSError:
                conn.out.clear()
                conn.closing = True
                return
            if sent == len(conn.out[0]) or self.bug == "drop-unsent":
                conn.out.popleft()
            else:
                conn.out[0] = conn.out[0][sent:]

    def answered_enough(self):
        return self.bug == "one-request" and self.requests >= 1

    def request(self, conn, line):
        try:
            if not line:
                raise Refused(400, "malformed request")
            cached, fd = self.answer(line)
        except Refused as refused:
            conn.out.append(memoryview(b"ERR %d %s\n" % (refused.code, refused.reason.encode())))
            if refused.code in (400, 414):
                conn.closing = True
            return
        if cached is not None:
            conn.out.append(memoryview(b"OK %d\n" % len(cached)))
            conn.out.append(memoryview(cached))
            return
        generation = self.generation
        if self.bug == "blocking-reads":
            self.finish(conn, line, generation, read_file(fd, self.delay, self.bug))
            return
        conn.waiting = True

        def job():
            try:
                result = read_file(fd, self.delay, self.bug)
            except OSError:
                result = Refused(500, "internal error")
            self.done.put((conn, line, generation, result))
            if self.bug == "lost-wakeup":
                return
            try:
                self.wake_w.send(b"x")
            except BlockingIOError:
                pass

        self.pool.submit(job)

    def update(self, conn, conns):
        """Closes a finished connection, or waits for what it needs next."""
        fd = conn.sock.fileno()
        if fd < 0:
            return
        if conn.closing and not conn.out and not conn.waiting:
            self.sel.unregister(conn.sock)
            del conns[fd]
            conn.sock.close()
            return
        events = selectors.EVENT_WRITE if conn.out else 0
        if not conn.peer_done and not conn.closing:
            events |= selectors.EVENT_READ
        self.sel.modify(conn.sock, events or selectors.EVENT_READ, conn)

    # -- the one-at-a-time variant (a bug at stage 2) -------------------------

    def run_iterative(self, listener):
        serving = [False]

        def on_term(*_):
            self.stopping = True
            if not serving[0]:
                sys.exit(0)

        self.install_signals(on_term)
        print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
        while not self.stopping:
            sock, _ = listener.accept()
            serving[0] = True
            with sock:
                if self.args.service == "time":
                    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                    sock.sendall(now.encode() + b"\n")
                else:
                    self.serve_blocking(sock)
            serving[0] = False
        sys.exit(0)

    def serve_blocking(self, sock):
        inbuf = bytearray()
        while True:
            newline = inbuf.find(b"\n")
            if newline < 0:
                if too_long(inbuf, self.bug):
                    sock.sendall(b"ERR 414 request line too long\n")
                    return
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data or self.stopping:
                    return
                inbuf += data
                continue
            line = bytes(inbuf[:newline]).rstrip(b"\r")
            del inbuf[: newline + 1]
            try:
                if not line:
                    raise Refused(400, "malformed request")
                cached, fd = self.answer(line)
                content = cached if cached is not None else read_file(fd, self.delay, self.bug)
                if cached is None and len(content) <= CACHE_MAX_FILE:
                    self.cache[line] = content
                    self.cache_bytes += len(content)
                sock.sendall(b"OK %d\n" % len(content) + content)
            except Refused as refused:
                sock.sendall(b"ERR %d %s\n" % (refused.code, refused.reason.encode()))
                if refused.code in (400, 414):
                    return


def flood():
    line = ("flood " * 2000 + "\n").encode()
    while True:
        try:
            os.write(1, line)
            os.write(2, line)
        except OSError:
            return


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7070)
    parser.add_argument("--root", default=".")
    parser.add_argument("--read-delay-ms", type=int, default=0)
    parser.add_argument("--service", choices=["file", "time"], default="file")
    parser.add_argument("--bug", choices=BUGS)
    args = parser.parse_args()
    if args.bug == "never-starts":
        log("server: cannot start (on purpose)")
        sys.exit(1)
    if args.bug == "floods":
        threading.Thread(target=flood, daemon=True).start()
    Server(args).run()


if __name__ == "__main__":
    main()
