"""Independent reference results for the 22 Nexmark queries on a bounded input.

Each ``qN(tables, ...)`` evaluates the published Flink query ``sabot/nexmark/sql/qN.sql``
with DuckDB SQL over the three generated Arrow tables (``tables = {"person": ...,
"auction": ..., "bid": ...}``, rows in event order, as ``generate_tables`` returns them)
and returns a ``pyarrow.Table`` whose columns are the query's sink table (names and
types of its ``CREATE TABLE nexmark_qN``). Nothing here uses Sabot: it is the yardstick
a Sabot implementation of each query is compared with.

Bounded-input semantics. The published queries are continuous; on a bounded input the
reference is what the sink holds once every event has been processed and the watermark
has passed the end of the input (Flink's behaviour at the end of a bounded source: the
watermark jumps to +inf and every window fires). The generator's timestamps never
decrease, so no event is late under the DDL's ``dateTime - 4 s`` watermark and nothing is
dropped. Precisely:

* Append-only projections and filters (q0, q1, q2, q10, q14, q21, q22): one row per
  qualifying bid.
* Regular joins (q3, q20) and updating aggregates (q4, q15, q16, q17): the final
  materialised result after all input (an updating sink's final table), which equals
  the batch query over all events.
* Event-time windows (q5 HOP 10 s / 2 s, q7 and q8 TUMBLE 10 s, q11 SESSION gap 10 s):
  every window that received at least one event. Windows are aligned to the epoch
  (window start = ts - ts mod size), [start, end) as in Flink; a session closes when the
  gap to the next bid of that bidder exceeds 10 s (Flink merges sessions whose windows
  [t, t + gap) touch, so a gap of exactly 10 s continues the session);
  ``SESSION_END`` = last bid + gap.
* Top-N / deduplication (q9, q18, q19) and q6: the final set of rows. Ties in an
  ``ORDER BY`` are broken as Flink's operators break them, by arrival order (the bid's
  position in the input, ``__seq``): q9 keeps, among bids with the highest price and the
  same earliest time, the earliest arrival; q18 keeps the last arrival among bids with
  the latest time (Flink's rowtime deduplication keeps the later row on equal time);
  q19 ranks equal prices by arrival (earlier = better rank). (In Flink, q9 and q6 rank
  the join's output, whose order is the bids' order except for a bid that arrives
  before its auction, i.e. a lead id at the auction's own millisecond; the reference
  uses the bid's position throughout.)
* q6 (which Flink itself cannot run: its OVER window does not take retractions): the
  final winning bid of every auction that has a bid in [dateTime, expires] (highest
  price, then earliest time, then earliest arrival), and per seller, in order of the
  winning bid's time (then arrival), the average of that price and the 10 preceding ones
  (``ROWS BETWEEN 10 PRECEDING AND CURRENT ROW``, i.e. up to 11 rows). Auctions still
  open at the end of the input count; the SQL has no notion of "closed".
* q12 (processing-time windows): what windows a bid lands in depends on the wall clock,
  so the reference checks what does not: :func:`q12` returns each bidder's total number
  of bids, which must equal the sum of ``bid_count`` over that bidder's windows in any
  run; :func:`check_q12` asserts that plus the window shape (10 s, epoch-aligned, one row
  per (bidder, window), counts >= 1). Given the processing time of every bid (a
  simulated clock), :func:`q12_with_proctime` returns the exact expected windows.
* q13 (processing-time lookup join): the side input is a static file, so the temporal
  join at processing time equals an inner join with that file; :func:`side_input`
  builds it as the Nexmark ``SideInputGenerator`` writes it (rows ``i, "i"`` for i in
  [0, 10000)).
* q10 (file sink partitioned by ``dt``/``hm``): the reference is the multiset of rows
  the sink must hold over all its partitions, partition columns included; partition
  commit timing is not checked.

Types follow Flink: ``AVG`` of a BIGINT is a BIGINT truncated toward zero (q4, q6,
q17); ``0.908 * price`` is ``DECIMAL(23, 3)`` (q1, q14); ``DATE_FORMAT`` and ``HOUR`` read
the timestamp's wall-clock fields (no time zone), as a Flink ``TIMESTAMP(3)`` is.

Quirks of the published texts kept as published: q7 selects ``B.price, B.bidder`` into
the sink's ``bidder, price`` columns, so the sink's ``bidder`` holds the price and
``price`` the bidder; q6's sink declares ``seller VARCHAR`` (the reference returns the
BIGINT seller, since the query never ran in Flink); q7 joins on ``BETWEEN window_end -
10 s AND window_end`` (both ends inclusive), so a bid exactly at a window's end also
matches that window's maximum.
"""

import duckdb
import numpy as np
import pyarrow as pa

TS = pa.timestamp("ms")
DEC = pa.decimal128(23, 3)

#: the sink columns of every query (``CREATE TABLE nexmark_qN`` of the published text)
SCHEMAS = {
    "q0": pa.schema([("auction", pa.int64()), ("bidder", pa.int64()), ("price", pa.int64()),
                     ("dateTime", TS), ("extra", pa.string())]),
    "q1": pa.schema([("auction", pa.int64()), ("bidder", pa.int64()), ("price", DEC),
                     ("dateTime", TS), ("extra", pa.string())]),
    "q2": pa.schema([("auction", pa.int64()), ("price", pa.int64())]),
    "q3": pa.schema([("name", pa.string()), ("city", pa.string()), ("state", pa.string()), ("id", pa.int64())]),
    "q4": pa.schema([("id", pa.int64()), ("final", pa.int64())]),
    "q5": pa.schema([("auction", pa.int64()), ("num", pa.int64())]),
    "q6": pa.schema([("seller", pa.int64()), ("avg_price", pa.int64())]),
    "q7": pa.schema([("auction", pa.int64()), ("bidder", pa.int64()), ("price", pa.int64()),
                     ("dateTime", TS), ("extra", pa.string())]),
    "q8": pa.schema([("id", pa.int64()), ("name", pa.string()), ("stime", TS)]),
    "q9": pa.schema([("id", pa.int64()), ("itemName", pa.string()), ("description", pa.string()),
                     ("initialBid", pa.int64()), ("reserve", pa.int64()), ("dateTime", TS), ("expires", TS),
                     ("seller", pa.int64()), ("category", pa.int64()), ("extra", pa.string()),
                     ("auction", pa.int64()), ("bidder", pa.int64()), ("price", pa.int64()),
                     ("bid_dateTime", TS), ("bid_extra", pa.string())]),
    "q10": pa.schema([("auction", pa.int64()), ("bidder", pa.int64()), ("price", pa.int64()),
                      ("dateTime", TS), ("extra", pa.string()), ("dt", pa.string()), ("hm", pa.string())]),
    "q11": pa.schema([("bidder", pa.int64()), ("bid_count", pa.int64()), ("starttime", TS), ("endtime", TS)]),
    "q12": pa.schema([("bidder", pa.int64()), ("bid_count", pa.int64()), ("starttime", TS), ("endtime", TS)]),
    "q13": pa.schema([("auction", pa.int64()), ("bidder", pa.int64()), ("price", pa.int64()),
                      ("dateTime", TS), ("value", pa.string())]),
    "q14": pa.schema([("auction", pa.int64()), ("bidder", pa.int64()), ("price", DEC),
                      ("bidTimeType", pa.string()), ("dateTime", TS), ("extra", pa.string()),
                      ("c_counts", pa.int64())]),
    "q15": pa.schema([("day", pa.string())] + [(c, pa.int64()) for c in (
        "total_bids", "rank1_bids", "rank2_bids", "rank3_bids", "total_bidders", "rank1_bidders",
        "rank2_bidders", "rank3_bidders", "total_auctions", "rank1_auctions", "rank2_auctions",
        "rank3_auctions")]),
    "q16": pa.schema([("channel", pa.string()), ("day", pa.string()), ("minute", pa.string())]
                     + [(c, pa.int64()) for c in (
                         "total_bids", "rank1_bids", "rank2_bids", "rank3_bids", "total_bidders", "rank1_bidders",
                         "rank2_bidders", "rank3_bidders", "total_auctions", "rank1_auctions", "rank2_auctions",
                         "rank3_auctions")]),
    "q17": pa.schema([("auction", pa.int64()), ("day", pa.string())] + [(c, pa.int64()) for c in (
        "total_bids", "rank1_bids", "rank2_bids", "rank3_bids", "min_price", "max_price", "avg_price",
        "sum_price")]),
    "q18": pa.schema([("auction", pa.int64()), ("bidder", pa.int64()), ("price", pa.int64()),
                      ("channel", pa.string()), ("url", pa.string()), ("dateTime", TS), ("extra", pa.string())]),
    "q19": pa.schema([("auction", pa.int64()), ("bidder", pa.int64()), ("price", pa.int64()),
                      ("channel", pa.string()), ("url", pa.string()), ("dateTime", TS), ("extra", pa.string()),
                      ("rank_number", pa.int64())]),
    "q20": pa.schema([("auction", pa.int64()), ("bidder", pa.int64()), ("price", pa.int64()),
                      ("channel", pa.string()), ("url", pa.string()), ("bid_dateTime", TS),
                      ("bid_extra", pa.string()), ("itemName", pa.string()), ("description", pa.string()),
                      ("initialBid", pa.int64()), ("reserve", pa.int64()), ("auction_dateTime", TS),
                      ("expires", TS), ("seller", pa.int64()), ("category", pa.int64()),
                      ("auction_extra", pa.string())]),
    "q21": pa.schema([("auction", pa.int64()), ("bidder", pa.int64()), ("price", pa.int64()),
                      ("channel", pa.string()), ("channel_id", pa.string())]),
    "q22": pa.schema([("auction", pa.int64()), ("bidder", pa.int64()), ("price", pa.int64()),
                      ("channel", pa.string()), ("dir1", pa.string()), ("dir2", pa.string()),
                      ("dir3", pa.string())]),
}

#: rows of the q13 side input (nexmark-flink bin/side_input_gen.sh: --num 10000)
SIDE_INPUT_ROWS = 10_000

# Flink's SPLIT_INDEX / DATE_FORMAT / window helpers, as DuckDB macros. ``ms`` is the
# epoch millisecond of a timestamp (DuckDB 2.0 cannot epoch_ms a TIMESTAMP_MS directly).
_MACROS = [
    "CREATE MACRO ms(t) AS epoch_ms(CAST(t AS TIMESTAMP))",
    "CREATE MACRO ts(m) AS CAST(epoch_ms(CAST(m AS BIGINT)) AS TIMESTAMP)",
    "CREATE MACRO tumble_start(t, size) AS (ms(t) // size) * size",
    "CREATE MACRO day_of(t) AS strftime(CAST(t AS TIMESTAMP), '%Y-%m-%d')",
    "CREATE MACRO minute_of(t) AS strftime(CAST(t AS TIMESTAMP), '%H:%M')",
    # q21's REGEXP_EXTRACT(url, '(&|^)channel_id=([^&]*)', 2): NULL without a match (DuckDB's
    # regexp_extract gives ''; its group must be a literal, hence one macro for this pattern)
    "CREATE MACRO channel_id_of(s) AS CASE WHEN regexp_matches(s, '(&|^)channel_id=([^&]*)') "
    "THEN regexp_extract(s, '(&|^)channel_id=([^&]*)', 2) ELSE NULL END",
    # SPLIT_INDEX(s, sep, i): 0-based field of s split on sep (empty fields kept), NULL past the end
    "CREATE MACRO split_index(s, sep, i) AS string_split(s, sep)[i + 1]",
]


def _connect(tables, extra=None):
    con = duckdb.connect()
    for name in ("person", "auction", "bid"):
        table = tables[name]
        # __seq: arrival order (the row's position in the input), for ties
        table = table.append_column("__seq", pa.array(np.arange(table.num_rows, dtype=np.int64)))
        con.register(name, table)
    for name, table in (extra or {}).items():
        con.register(name, table)
    for macro in _MACROS:
        con.execute(macro)
    return con


def _arrow(relation):
    """A DuckDB relation's result as a pyarrow Table (the method name moved between versions)."""
    for name in ("to_arrow_table", "fetch_arrow_table"):
        if hasattr(type(relation), name):
            return getattr(relation, name)()
    result = relation.arrow()
    return result.read_all() if hasattr(result, "read_all") else result


def _run(query, tables, sql, extra=None):
    """Run ``sql`` and cast the result to the sink schema of ``query`` (names checked)."""
    con = _connect(tables, extra)
    try:
        result = _arrow(con.sql(sql))
    finally:
        con.close()
    schema = SCHEMAS[query]
    if result.column_names != schema.names:
        raise AssertionError(f"{query}: reference columns {result.column_names} != sink {schema.names}")
    return result.cast(schema)


def q0(tables):
    """Pass-through: every bid (auction, bidder, price, dateTime, extra), in input order."""
    return _run("q0", tables, """
        SELECT auction, bidder, price, "dateTime", extra FROM bid ORDER BY __seq""")


def q1(tables):
    """Currency conversion: price := 0.908 * price as DECIMAL(23, 3), every bid."""
    return _run("q1", tables, """
        SELECT auction, bidder, CAST(0.908 * price AS DECIMAL(23, 3)) AS price, "dateTime", extra
        FROM bid ORDER BY __seq""")


def q2(tables):
    """Selection: (auction, price) of the bids with auction % 123 = 0."""
    return _run("q2", tables, """
        SELECT auction, price FROM bid WHERE auction % 123 = 0 ORDER BY __seq""")


def q3(tables):
    """Local item suggestion: sellers in OR/ID/CA of category-10 auctions (final join result)."""
    return _run("q3", tables, """
        SELECT P.name, P.city, P.state, A.id
        FROM auction A JOIN person P ON A.seller = P.id
        WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')
        ORDER BY A.id""")


def q4(tables):
    """Average winning price per category (final table of the updating aggregate).

    Winning price of an auction = max price of its bids with ``dateTime`` in
    [auction.dateTime, expires] (both inclusive); auctions without such a bid do not
    count. ``AVG`` of BIGINT is BIGINT, truncated (sum // count). Columns as the sink:
    ``id`` is the category.
    """
    return _run("q4", tables, """
        SELECT Q.category AS id, CAST(sum(Q.final) // count(*) AS BIGINT) AS final
        FROM (
            SELECT max(B.price) AS final, A.category
            FROM auction A JOIN bid B
              ON A.id = B.auction AND B."dateTime" BETWEEN A."dateTime" AND A.expires
            GROUP BY A.id, A.category
        ) Q
        GROUP BY Q.category ORDER BY id""")


def q5(tables, size_ms=10_000, slide_ms=2_000, with_window=False):
    """Hot items: per HOP window (size 10 s, slide 2 s), the auctions with the most bids.

    Every window with at least one bid; ties all kept (``num >= max``). A bid at time t
    is in the windows starting at ``t - t mod slide - k * slide`` for ``k`` in
    ``[0, size / slide)``. ``with_window=True`` adds the window start and end.
    """
    if size_ms % slide_ms:
        raise ValueError("the reference needs size_ms to be a multiple of slide_ms, as the query has")
    extra_cols = ", ts(c.ws) AS window_start, ts(c.ws + {size}) AS window_end" if with_window else ""
    sql = f"""
        WITH hb AS (
            SELECT auction, (ms("dateTime") // {slide_ms}) * {slide_ms} - k * {slide_ms} AS ws
            FROM bid, range({size_ms // slide_ms}) r(k)),
        c AS (SELECT auction, ws, count(*) AS num FROM hb GROUP BY auction, ws),
        m AS (SELECT ws, max(num) AS maxn FROM c GROUP BY ws)
        SELECT c.auction, c.num{extra_cols.format(size=size_ms)}
        FROM c JOIN m ON c.ws = m.ws AND c.num >= m.maxn
        ORDER BY c.ws, c.auction"""
    if not with_window:
        return _run("q5", tables, sql)
    con = _connect(tables)
    try:
        return _arrow(con.sql(sql))
    finally:
        con.close()


def q6(tables, preceding=10):
    """Average selling price by seller over its last 11 winning bids (see module docstring)."""
    return _run("q6", tables, f"""
        WITH w AS (
            SELECT A.id, A.seller, B.price, B."dateTime" AS bt, B.__seq AS bseq,
                   row_number() OVER (PARTITION BY A.id, A.seller
                                      ORDER BY B.price DESC, B."dateTime" ASC, B.__seq ASC) AS rownum
            FROM auction A JOIN bid B
              ON A.id = B.auction AND B."dateTime" BETWEEN A."dateTime" AND A.expires),
        q AS (SELECT * FROM w WHERE rownum <= 1)
        SELECT seller,
               CAST(sum(price) OVER win // count(price) OVER win AS BIGINT) AS avg_price
        FROM q
        WINDOW win AS (PARTITION BY seller ORDER BY bt, bseq ROWS BETWEEN {int(preceding)} PRECEDING AND CURRENT ROW)
        ORDER BY seller, bt, bseq""")


def q7(tables, size_ms=10_000):
    """Highest bid: bids whose price equals the max of a 10 s tumbling window.

    Join condition as published: ``B.dateTime BETWEEN window_end - 10 s AND window_end``
    (inclusive). The sink gets ``B.auction, B.price, B.bidder, ...`` positionally, so its
    ``bidder`` column holds the price and ``price`` the bidder.
    """
    return _run("q7", tables, f"""
        WITH b1 AS (
            SELECT max(price) AS maxprice, tumble_start("dateTime", {size_ms}) + {size_ms} AS we
            FROM bid GROUP BY tumble_start("dateTime", {size_ms}))
        SELECT B.auction, B.price AS bidder, B.bidder AS price, B."dateTime", B.extra
        FROM bid B JOIN b1 ON B.price = b1.maxprice
        WHERE ms(B."dateTime") BETWEEN b1.we - {size_ms} AND b1.we
        ORDER BY b1.we, B.__seq""")


def q8(tables, size_ms=10_000):
    """New users: persons who created an auction in the same 10 s tumbling window."""
    return _run("q8", tables, f"""
        WITH p AS (SELECT id, name, tumble_start("dateTime", {size_ms}) AS ws
                   FROM person GROUP BY id, name, tumble_start("dateTime", {size_ms})),
             a AS (SELECT seller, tumble_start("dateTime", {size_ms}) AS ws
                   FROM auction GROUP BY seller, tumble_start("dateTime", {size_ms}))
        SELECT p.id, p.name, ts(p.ws) AS stime
        FROM p JOIN a ON p.id = a.seller AND p.ws = a.ws
        ORDER BY p.ws, p.id""")


def q9(tables):
    """Winning bid per auction: highest price, then earliest time, then earliest arrival.

    Only bids with ``dateTime`` in [auction.dateTime, expires] count; auctions without
    one have no row.
    """
    return _run("q9", tables, """
        SELECT id, itemName, description, initialBid, reserve, "dateTime", expires, seller, category, extra,
               auction, bidder, price, bid_dateTime, bid_extra
        FROM (
            SELECT A.id, A.itemName, A.description, A.initialBid, A.reserve, A."dateTime", A.expires,
                   A.seller, A.category, A.extra, B.auction, B.bidder, B.price,
                   B."dateTime" AS bid_dateTime, B.extra AS bid_extra,
                   row_number() OVER (PARTITION BY A.id
                                      ORDER BY B.price DESC, B."dateTime" ASC, B.__seq ASC) AS rownum
            FROM auction A JOIN bid B
              ON A.id = B.auction AND B."dateTime" BETWEEN A."dateTime" AND A.expires)
        WHERE rownum <= 1
        ORDER BY id""")


def q10(tables):
    """Log to file system: every bid with dt = 'yyyy-MM-dd' and hm = 'HH:mm' of its time.

    The rows the partitioned sink must hold (over all partitions), partition columns
    included.
    """
    return _run("q10", tables, """
        SELECT auction, bidder, price, "dateTime", extra, day_of("dateTime") AS dt, minute_of("dateTime") AS hm
        FROM bid ORDER BY __seq""")


def q11(tables, gap_ms=10_000):
    """User sessions: per bidder, sessions of bids with gaps <= 10 s; count, start, end.

    ``starttime`` = first bid, ``endtime`` = last bid + gap (Flink's SESSION_END).
    """
    return _run("q11", tables, f"""
        WITH o AS (SELECT bidder, ms("dateTime") AS t, __seq FROM bid),
        g AS (SELECT bidder, t, __seq,
                     CASE WHEN t - lag(t) OVER (PARTITION BY bidder ORDER BY t, __seq) <= {gap_ms}
                          THEN 0 ELSE 1 END AS new_session
              FROM o),
        s AS (SELECT bidder, t,
                     sum(new_session) OVER (PARTITION BY bidder ORDER BY t, __seq ROWS UNBOUNDED PRECEDING) AS sid
              FROM g)
        SELECT bidder, count(*) AS bid_count, ts(min(t)) AS starttime, ts(max(t) + {gap_ms}) AS endtime
        FROM s GROUP BY bidder, sid
        ORDER BY bidder, starttime""")


def q12(tables):
    """Processing-time windows: what any run must agree on, each bidder's total bids.

    Returns (bidder, bid_count) with one row per bidder; in every run the q12 sink's
    ``bid_count`` summed over a bidder's windows equals this. See :func:`check_q12`.
    """
    con = _connect(tables)
    try:
        return _arrow(con.sql("SELECT bidder, count(*) AS bid_count FROM bid GROUP BY bidder ORDER BY bidder"
                              )).cast(pa.schema([("bidder", pa.int64()), ("bid_count", pa.int64())]))
    finally:
        con.close()


def q12_with_proctime(tables, proctime_ms, size_ms=10_000):
    """The exact q12 result if bid ``i`` (input order) reached the window at ``proctime_ms[i]``."""
    proc = pa.table({"__seq": pa.array(np.arange(len(proctime_ms), dtype=np.int64)),
                     "p_ms": pa.array(np.asarray(proctime_ms, dtype=np.int64))})
    return _run("q12", tables, f"""
        SELECT b.bidder, count(*) AS bid_count, ts((p.p_ms // {size_ms}) * {size_ms}) AS starttime,
               ts((p.p_ms // {size_ms}) * {size_ms} + {size_ms}) AS endtime
        FROM bid b JOIN proc p USING (__seq)
        GROUP BY b.bidder, p.p_ms // {size_ms}
        ORDER BY bidder, starttime""", extra={"proc": proc})


def check_q12(output, tables, size_ms=10_000):
    """Assert that ``output`` (a q12 sink table) is a possible result for ``tables``.

    Checks: the sink columns; every window is [k * 10 s, (k + 1) * 10 s); one row per
    (bidder, window); bid_count >= 1; and per bidder the counts add up to
    :func:`q12`'s totals (no bid lost or counted twice, no bidder invented).
    """
    if output.schema.names != SCHEMAS["q12"].names:
        raise AssertionError(f"q12 columns {output.schema.names} != {SCHEMAS['q12'].names}")
    start = output.column("starttime").cast(pa.int64()).to_numpy()
    end = output.column("endtime").cast(pa.int64()).to_numpy()
    if (start % size_ms).any() or ((end - start) != size_ms).any():
        raise AssertionError("q12: a window is not an epoch-aligned 10 s processing-time window")
    if (output.column("bid_count").to_numpy() < 1).any():
        raise AssertionError("q12: a window row has bid_count < 1")
    keys = output.select(["bidder", "starttime"]).group_by(["bidder", "starttime"]).aggregate([([], "count_all")])
    if keys.num_rows != output.num_rows:
        raise AssertionError("q12: more than one row for a (bidder, window)")
    totals = output.group_by("bidder").aggregate([("bid_count", "sum")]).rename_columns(["bidder", "bid_count"])
    expected = q12(tables)
    got = dict(zip(totals.column("bidder").to_pylist(), totals.column("bid_count").to_pylist()))
    want = dict(zip(expected.column("bidder").to_pylist(), expected.column("bid_count").to_pylist()))
    if got != want:
        diff = {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)}
        raise AssertionError(f"q12: per-bidder totals differ from the input (bidder: (got, want)): "
                             f"{dict(list(diff.items())[:10])}")


def side_input(rows=SIDE_INPUT_ROWS):
    """The q13 side input as the Nexmark SideInputGenerator writes it: (i, "i"), i < rows."""
    keys = np.arange(rows, dtype=np.int64)
    return pa.table({"key": pa.array(keys), "value": pa.array(keys.astype(str).astype(object), pa.string())})


def q13(tables, side=None):
    """Bounded side-input join: each bid joined with side_input on auction % 10000 = key."""
    side = side_input() if side is None else side
    return _run("q13", tables, """
        SELECT B.auction, B.bidder, B.price, B."dateTime", S."value"
        FROM bid B JOIN side_input S ON B.auction % 10000 = S."key"
        ORDER BY B.__seq""", extra={"side_input": side})


def q14(tables):
    """Calculation: bids with 0.908 * price in (1e6, 5e7), their hour type and 'c' count."""
    return _run("q14", tables, """
        SELECT auction, bidder, CAST(0.908 * price AS DECIMAL(23, 3)) AS price,
               CASE WHEN hour("dateTime") >= 8 AND hour("dateTime") <= 18 THEN 'dayTime'
                    WHEN hour("dateTime") <= 6 OR hour("dateTime") >= 20 THEN 'nightTime'
                    ELSE 'otherTime' END AS bidTimeType,
               "dateTime", extra,
               length(extra) - length(replace(extra, 'c', '')) AS c_counts
        FROM bid
        WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000
        ORDER BY __seq""")


_RANK_FILTERS = """
       count(*) AS total_bids,
       count(*) FILTER (WHERE price < 10000) AS rank1_bids,
       count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
       count(*) FILTER (WHERE price >= 1000000) AS rank3_bids"""

_DISTINCT_FILTERS = """,
       count(DISTINCT bidder) AS total_bidders,
       count(DISTINCT bidder) FILTER (WHERE price < 10000) AS rank1_bidders,
       count(DISTINCT bidder) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bidders,
       count(DISTINCT bidder) FILTER (WHERE price >= 1000000) AS rank3_bidders,
       count(DISTINCT auction) AS total_auctions,
       count(DISTINCT auction) FILTER (WHERE price < 10000) AS rank1_auctions,
       count(DISTINCT auction) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_auctions,
       count(DISTINCT auction) FILTER (WHERE price >= 1000000) AS rank3_auctions"""


def q15(tables):
    """Bidding statistics per day (final table of the updating aggregate)."""
    return _run("q15", tables, f"""
        SELECT day_of("dateTime") AS "day",{_RANK_FILTERS}{_DISTINCT_FILTERS}
        FROM bid GROUP BY day_of("dateTime") ORDER BY "day"
        """)


def q16(tables):
    """Channel statistics per (channel, day), with the latest 'HH:mm' seen as ``minute``."""
    return _run("q16", tables, f"""
        SELECT channel, day_of("dateTime") AS "day",
               max(minute_of("dateTime")) AS "minute",{_RANK_FILTERS}{_DISTINCT_FILTERS}
        FROM bid GROUP BY channel, day_of("dateTime") ORDER BY channel, "day"
        """)


def q17(tables):
    """Auction statistics per (auction, day); avg_price is BIGINT (truncated)."""
    return _run("q17", tables, f"""
        SELECT auction, day_of("dateTime") AS "day",{_RANK_FILTERS},
               min(price) AS min_price, max(price) AS max_price,
               CAST(sum(price) // count(price) AS BIGINT) AS avg_price, sum(price) AS sum_price
        FROM bid GROUP BY auction, day_of("dateTime") ORDER BY auction, "day"
        """)


def q18(tables):
    """Last bid per (bidder, auction): latest dateTime, and among equal times the last arrival."""
    return _run("q18", tables, """
        SELECT auction, bidder, price, channel, url, "dateTime", extra
        FROM (SELECT *, row_number() OVER (PARTITION BY bidder, auction
                                           ORDER BY "dateTime" DESC, __seq DESC) AS rank_number
              FROM bid)
        WHERE rank_number <= 1
        ORDER BY bidder, auction""")


def q19(tables, n=10):
    """Top 10 bids by price per auction with their rank; equal prices ranked by arrival."""
    return _run("q19", tables, f"""
        SELECT auction, bidder, price, channel, url, "dateTime", extra, rank_number
        FROM (SELECT *, row_number() OVER (PARTITION BY auction ORDER BY price DESC, __seq ASC) AS rank_number
              FROM bid)
        WHERE rank_number <= {int(n)}
        ORDER BY auction, rank_number""")


def q20(tables):
    """Bids joined with their auction, category 10 only (final join result)."""
    return _run("q20", tables, """
        SELECT B.auction, B.bidder, B.price, B.channel, B.url, B."dateTime" AS bid_dateTime,
               B.extra AS bid_extra, A.itemName, A.description, A.initialBid, A.reserve,
               A."dateTime" AS auction_dateTime, A.expires, A.seller, A.category, A.extra AS auction_extra
        FROM bid B JOIN auction A ON B.auction = A.id
        WHERE A.category = 10
        ORDER BY B.__seq""")


def q21(tables):
    """Channel id: the hot channels' fixed ids, else the url's channel_id; others dropped."""
    return _run("q21", tables, """
        SELECT auction, bidder, price, channel,
               CASE WHEN lower(channel) = 'apple' THEN '0'
                    WHEN lower(channel) = 'google' THEN '1'
                    WHEN lower(channel) = 'facebook' THEN '2'
                    WHEN lower(channel) = 'baidu' THEN '3'
                    ELSE channel_id_of(url) END AS channel_id
        FROM bid
        WHERE channel_id_of(url) IS NOT NULL
           OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu')
        ORDER BY __seq""")


def q22(tables):
    """URL directories: fields 3, 4 and 5 (0-based) of the url split on '/'."""
    return _run("q22", tables, """
        SELECT auction, bidder, price, channel,
               split_index(url, '/', 3) AS dir1, split_index(url, '/', 4) AS dir2, split_index(url, '/', 5) AS dir3
        FROM bid ORDER BY __seq""")


#: q0 ... q22 by name (q12 returns per-bidder totals; see its docstring)
QUERIES = {f"q{i}": globals()[f"q{i}"] for i in range(23)}
