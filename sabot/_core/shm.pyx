# cython: language_level=3
"""Release words of a shared-memory ring (see :mod:`sabot.runtime.shm`).

A receiver lends a region of the ring to Arrow as a :class:`Lease`: an object that
exports the region through the buffer protocol (read-only), so ``pa.py_buffer(lease)``
builds batches on it without copying. Arrow's buffers hold the lease; when the last
one is freed the lease is deallocated and stores its sequence number in the region's
release word. The sender reads the words with :func:`released_slots` and reuses the
regions whose word holds their sequence number. No message is needed.

The store has release ordering and the load acquire ordering: everything the receiver
read from a region happens before the sender may overwrite it, on weakly ordered CPUs
(aarch64) too, which plain Python stores into a memoryview do not promise.

The addresses are raw: the caller (sabot.runtime.shm, which checks every offset against
the mapping) keeps the memory mapped by handing the lease an ``owner``.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_FillInfo, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint64_t, uintptr_t

cdef extern from *:
    """
    static inline void sabot_store_release(uint64_t* p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline uint64_t sabot_load_acquire(const uint64_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    """
    void sabot_store_release(uint64_t* p, uint64_t v) nogil
    uint64_t sabot_load_acquire(const uint64_t* p) nogil


cdef class Lease:
    """``size`` bytes at ``address``, lent to Arrow; freeing it stores ``seq`` at ``word_address``.

    Args:
        owner: any object that keeps the memory at both addresses mapped while the
            lease lives (the ring).
        address: the region's first byte.
        size: the region's length (> 0).
        word_address: the region's release word (8-byte aligned).
        seq: the value stored there when the lease is freed (> 0).
    """

    def __cinit__(self, owner, uintptr_t address, Py_ssize_t size, uintptr_t word_address, uint64_t seq):
        if owner is None or address == 0 or size <= 0 or word_address == 0 or word_address % 8 or seq == 0:
            raise ValueError(f"a lease needs an owner, a region and an aligned release word, got "
                             f"address={address:#x} size={size} word={word_address:#x} seq={seq}")
        self.owner = owner
        self.ptr = <char*>address
        self.size = size
        self.word = <uint64_t*>word_address
        self.seq = seq

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        # readonly=1: a request for a writable buffer raises BufferError
        PyBuffer_FillInfo(buffer, self, self.ptr, self.size, 1, flags)

    def __releasebuffer__(self, Py_buffer* buffer):
        pass

    def __dealloc__(self):
        if self.word != NULL:
            sabot_store_release(self.word, self.seq)

    @staticmethod
    def address_of(obj):
        """The address of the first byte of ``obj``'s buffer (the caller keeps ``obj`` alive)."""
        cdef Py_buffer view
        PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE)
        cdef uintptr_t address = <uintptr_t>view.buf
        PyBuffer_Release(&view)
        return address


def released_slots(uintptr_t words_address, list live):
    """The slots of ``live`` regions (``[start, end, seq, slot]`` lists) whose word holds their seq.

    ``words_address`` is the first release word; every slot must be inside the caller's
    word array (the sender's own bookkeeping, never a peer's number).
    """
    cdef const uint64_t* words = <const uint64_t*>words_address
    cdef list done = []
    cdef list region
    cdef Py_ssize_t slot
    for region in live:
        slot = region[3]
        if sabot_load_acquire(&words[slot]) == <uint64_t>region[2]:
            done.append(slot)
    return done
