"""sabot._core.shm: leases over shared memory and their release words."""

import gc

import numpy as np
import pyarrow as pa
import pytest

from sabot._core.shm import Lease, released_slots


def region_and_words():
    data = np.arange(4096, dtype=np.uint8)
    words = np.zeros(8, np.uint64)
    return data, words, data.ctypes.data, words.ctypes.data


def test_a_lease_lends_its_bytes_read_only_and_releases_when_arrow_lets_go():
    data, words, address, words_address = region_and_words()
    owner = (data, words)
    buf = pa.py_buffer(Lease(owner, address + 64, 128, words_address + 3 * 8, 41))
    assert buf.address == address + 64 and buf.size == 128 and not buf.is_mutable
    assert buf.to_pybytes() == bytes(range(64, 192))
    view = buf.slice(10, 5)  # a slice keeps the lease alive
    batch = pa.record_batch({"x": pa.Array.from_buffers(pa.uint8(), 128, [None, buf])})
    del buf
    gc.collect()
    assert words[3] == 0
    del view
    assert words[3] == 0
    assert batch.column(0)[70].as_py() == 134
    del batch
    assert words[3] == 41 and words.sum() == 41


def test_a_lease_refuses_a_writable_export_and_bad_arguments():
    data, words, address, words_address = region_and_words()
    lease = Lease(data, address, 16, words_address, 1)
    view = memoryview(lease)
    assert view.readonly and bytes(view) == bytes(range(16))
    with pytest.raises(TypeError, match="read-only"):
        view[0] = 1
    view.release()
    for args in ((None, address, 16, words_address, 1), (data, 0, 16, words_address, 1),
                 (data, address, 0, words_address, 1), (data, address, 16, words_address + 4, 1),
                 (data, address, 16, words_address, 0)):
        with pytest.raises(ValueError):
            Lease(*args)
    del lease
    assert words[0] == 1


def test_released_slots_are_those_whose_word_holds_their_sequence_number():
    words = np.zeros(8, np.uint64)
    words[2] = 7
    words[5] = 3  # an older sequence number: slot 5 now holds a newer region
    live = [[0, 64, 7, 2], [64, 128, 9, 5], [128, 192, 4, 1]]
    assert released_slots(words.ctypes.data, live) == [2]
    words[1] = 4
    assert sorted(released_slots(words.ctypes.data, live)) == [1, 2]
    assert released_slots(words.ctypes.data, []) == []


def test_address_of_is_the_first_byte_of_a_buffer():
    data = np.zeros(10, np.uint8)
    assert Lease.address_of(data) == data.ctypes.data
    assert Lease.address_of(memoryview(bytearray(b"abc"))) != 0
