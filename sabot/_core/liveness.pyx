# cython: language_level=3
"""Heartbeats from a native thread that never takes the GIL.

A worker's liveness must not depend on its Python threads being free: a user
function that holds the GIL for seconds (one long C call in pandas or a regex), or
a big deployment, must not get the worker declared lost. ``HeartbeatThread`` runs a
POSIX thread that only touches one connected socket: every ``interval`` it sends an
8-byte beat (a little-endian counter) and reads whatever the peer sent back (8-byte
acks) until the next beat is due. It runs while the interpreter is busy, stops when
the process is stopped (SIGSTOP: the coordinator then hears silence) and ends with
the process (kill -9: the peer sees the connection close at once).

The Python side reads the thread's counters and whether the peer closed the
connection (the coordinator declared the worker lost, or stopped).

Example:
    >>> import socket
    >>> a, b = socket.socketpair()
    >>> beat = HeartbeatThread(a.detach(), 0.01)
    >>> beat.start(); b.recv(8) != b""; beat.stop()     # doctest: +SKIP
    True
"""

from libc.stdint cimport int64_t, uint64_t
from libc.errno cimport errno, EAGAIN, EINTR

cdef extern from "<pthread.h>" nogil:
    int pthread_create(pthread_t* thread, void* attr, void* (*start)(void*) noexcept nogil, void* arg)
    int pthread_join(pthread_t thread, void** ret)

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd* fds, unsigned long nfds, int timeout)
    short POLLIN
    short POLLERR
    short POLLHUP
    short POLLNVAL

cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    int MSG_NOSIGNAL
    int MSG_DONTWAIT

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    int CLOCK_MONOTONIC

cdef extern from *:
    """
    static inline int sabot_load_int(volatile int* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void sabot_store_int(volatile int* p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    """
    int sabot_load_int(volatile int* p) nogil
    void sabot_store_int(volatile int* p, int v) nogil

__all__ = ["HeartbeatThread"]


cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef void* _run(void* arg) noexcept nogil:
    cdef _Beat* b = <_Beat*>arg
    cdef unsigned char out[8]
    cdef unsigned char buf[256]
    cdef pollfd p
    cdef ssize_t n
    cdef uint64_t counter
    cdef int64_t due, left_ms
    cdef int rc, i
    while not sabot_load_int(&b.stop):
        counter = b.beats + 1
        for i in range(8):
            out[i] = <unsigned char>((counter >> (8 * i)) & 0xFF)
        n = send(b.fd, out, 8, MSG_NOSIGNAL)
        if n != 8:
            if n < 0 and (errno == EINTR or errno == EAGAIN):
                continue
            b.err = errno
            sabot_store_int(&b.closed, 2)
            break
        b.beats = counter
        due = _now_ns() + <int64_t>b.interval_ms * 1000000
        while not sabot_load_int(&b.stop):
            left_ms = (due - _now_ns()) // 1000000
            if left_ms <= 0:
                break
            p.fd = b.fd
            p.events = POLLIN
            p.revents = 0
            rc = poll(&p, 1, <int>(left_ms if left_ms < 100 else 100))  # wake often enough to see stop
            if rc < 0:
                if errno == EINTR:
                    continue
                b.err = errno
                sabot_store_int(&b.closed, 2)
                return NULL
            if rc == 0:
                continue
            if p.revents & POLLIN:
                n = recv(b.fd, buf, 256, MSG_DONTWAIT)
                if n == 0:
                    sabot_store_int(&b.closed, 1)
                    return NULL
                if n < 0:
                    if errno == EINTR or errno == EAGAIN:  # EWOULDBLOCK == EAGAIN on Linux
                        continue
                    b.err = errno
                    sabot_store_int(&b.closed, 2)
                    return NULL
                b.acks += <uint64_t>(n // 8)
                b.last_ack_ns = _now_ns()
            elif p.revents & (POLLERR | POLLHUP | POLLNVAL):
                sabot_store_int(&b.closed, 1 if p.revents & POLLHUP else 2)
                return NULL
    return NULL


cdef class HeartbeatThread:
    """Send a beat every ``interval_s`` seconds on a connected socket, from a native thread.

    Args:
        fd: a connected stream socket's file descriptor (``socket.detach()``); the thread
            owns it from now on and closes it when stopped.
        interval_s: seconds between beats (>= 0.001).
    """

    def __cinit__(self, int fd, double interval_s):
        if fd < 0:
            raise ValueError(f"HeartbeatThread needs a connected socket's file descriptor, got {fd}")
        if not interval_s >= 0.001:
            raise ValueError(f"interval_s must be >= 0.001, got {interval_s!r}")
        self.state.fd = fd
        self.state.interval_ms = <int>(interval_s * 1000)
        self.state.stop = 0
        self.state.closed = 0
        self.state.err = 0
        self.state.beats = 0
        self.state.acks = 0
        self.state.last_ack_ns = _now_ns()
        self.started = False
        self.joined = False

    def start(self):
        """Start the thread (once)."""
        if self.started:
            raise RuntimeError("the heartbeat thread was already started")
        cdef int rc = pthread_create(&self.thread, NULL, _run, &self.state)
        if rc != 0:
            raise OSError(rc, "pthread_create failed for the heartbeat thread")
        self.started = True

    def stop(self):
        """Stop the thread, wait for it and close the socket (idempotent)."""
        if self.started and not self.joined:
            sabot_store_int(&self.state.stop, 1)
            with nogil:
                pthread_join(self.thread, NULL)
            self.joined = True
        if self.state.fd >= 0:
            close(self.state.fd)
            self.state.fd = -1

    def __dealloc__(self):
        if self.started and not self.joined:
            sabot_store_int(&self.state.stop, 1)
            with nogil:
                pthread_join(self.thread, NULL)
        if self.state.fd >= 0:
            close(self.state.fd)

    @property
    def running(self):
        """True while the thread sends beats (started, not stopped, the connection up)."""
        return self.started and not self.joined and not sabot_load_int(&self.state.closed)

    @property
    def closed(self):
        """None while the connection is up; else why it ended: ``"peer closed"`` or ``"error <errno>"``."""
        cdef int c = sabot_load_int(&self.state.closed)
        if c == 0:
            return None
        return "peer closed" if c == 1 else f"error {self.state.err}"

    @property
    def beats(self):
        """Beats sent so far."""
        return self.state.beats

    @property
    def acks(self):
        """Acks received so far (8 bytes each)."""
        return self.state.acks

    @property
    def seconds_since_ack(self):
        """Seconds since the peer last sent anything (since start if it never did)."""
        return (_now_ns() - self.state.last_ack_ns) / 1e9
