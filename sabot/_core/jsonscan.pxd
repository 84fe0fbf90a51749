# Module map of sabot._core.jsonscan: a nogil scan of raw JSON bytes that measures nesting
# depth and the number of values, so a server can refuse a hostile body before parsing it.

cdef extern from *:
    """
    /* Returns 0, or 1 when max_depth or max_items was passed (the scan stopped there). */
    static int sabot_json_measure(const unsigned char* p, Py_ssize_t n, long max_depth, long max_items,
                                  long* depth_out, long* items_out) {
        long depth = 0, deepest = 0, items = 0;
        int in_string = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            unsigned char c = p[i];
            if (in_string) {
                if (c == '\\\\') { i++; }
                else if (c == '"') { in_string = 0; }
                continue;
            }
            switch (c) {
            case '"': in_string = 1; break;
            case '[': case '{':
                depth++; items++;
                if (depth > deepest) deepest = depth;
                break;
            case ']': case '}': depth--; break;
            case ',': items++; break;
            default: break;
            }
            if (deepest > max_depth || items > max_items) {
                *depth_out = deepest; *items_out = items;
                return 1;
            }
        }
        *depth_out = deepest; *items_out = items;
        return 0;
    }
    """
    int sabot_json_measure(const unsigned char* p, Py_ssize_t n, long max_depth, long max_items,
                           long* depth_out, long* items_out) nogil
