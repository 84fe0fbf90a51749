# cython: language_level=3, boundscheck=False, wraparound=False
"""A look at raw JSON before anyone parses it: how deep it nests and how many values it holds.

Parsing builds one Python object per value while holding the GIL: a 60 MB body of
``[[],[],...]`` is 21 M lists, 5 s of parsing and 3 GB of memory before any check
could refuse it. :func:`measure` scans the bytes once without the GIL (~1 GB/s) and
stops as soon as a limit is passed, so a server refuses such a body having spent
next to nothing on it.

It counts structure only (brackets, braces and commas outside strings); it does not
validate the document, the parser that runs afterwards does.

Example:
    >>> measure(b'{"a": [1, 2, {"b": "[not, counted]"}]}')
    (3, 5)
"""

def measure(const unsigned char[::1] data not None, long max_depth=2**62, long max_items=2**62):
    """``(deepest nesting, number of containers and commas)`` of the JSON ``data``.

    The scan stops once ``max_depth`` or ``max_items`` is passed; the figures returned
    then exceed the limit passed (not the document's totals). The GIL is released while
    it runs, so a thread scanning a big body leaves the event loop free.
    """
    cdef long depth = 0, items = 0
    cdef Py_ssize_t n = data.shape[0]
    if n == 0:
        return 0, 0
    with nogil:
        sabot_json_measure(&data[0], n, max_depth, max_items, &depth, &items)
    return depth, items
