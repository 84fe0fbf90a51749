# Module map of sabot._core.liveness: a native (nogil) thread that sends heartbeats on
# one connected socket, so a worker's liveness never waits for the GIL.

from libc.stdint cimport int64_t, uint64_t

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t


cdef struct _Beat:
    int fd
    int interval_ms
    volatile int stop
    volatile int closed      # 1: the peer closed the connection; 2: an error broke it
    volatile int err         # errno of the error
    uint64_t beats           # beats sent
    uint64_t acks            # acks received (8 bytes each)
    int64_t last_ack_ns      # monotonic ns of the last byte received


cdef class HeartbeatThread:
    cdef _Beat state
    cdef pthread_t thread
    cdef bint started
    cdef bint joined
