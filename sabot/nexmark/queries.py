"""The Nexmark queries q0 ... q22 written with Sabot's Stream API, as the published SQL means.

Source. The published DDL (``ddl_gen.sql`` / ``ddl_views.sql``) reads *one* event stream
(``datagen``, a row per event with ``event_type`` and ``person`` / ``auction`` / ``bid``
structs) with one watermark, ``dateTime - 4 s``, and defines the three tables as views
filtered by ``event_type``. :func:`sources` does the same: one generator source over
:func:`sequenced_events`, watermarks on ``dateTime`` with 4 s out-of-orderness, and three
filter + projection views. One source (rather than three) keeps what the benchmark
measures: persons, auctions and bids arrive interleaved in event-time order under one
event-time clock, as in Flink, so joins, windows and state retention see what they see
there, and events/s counts events.

Arrival order. A few queries rank or deduplicate with ties on their ``ORDER BY`` (q9,
q18, q19), which Flink breaks by arrival order. Arrival order across parallel source
subtasks is not deterministic, so every view carries ``__seq``, the event's position in
the generated sequence, and those queries add it as the last ordering column (what
"arrival order" means on one ordered input, and what the reference,
``tests/nexmark/reference.py``, uses). Projections drop it.

Each ``qN(views)`` returns the Stream of the query's sink rows (columns as the sink
table ``nexmark_qN``); :func:`build` puts a source, the query and a collect sink
together. q10 writes a partitioned file sink (``path=``); q13's side input is the
static table :func:`side_input` (a file in the benchmark), joined with ``join_table``.
q6 is left out, as in Flink's Nexmark (its OVER window over an updating input has no
streaming form; 22 queries).

Updating aggregates (q4, q15, q16, q17) and regular Top-N (q9, q18, q19) emit their
final result when the input ends (``emit="final"``), which is the sink's final table on
a bounded input; windows emit as the watermark passes.
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sabot.api.stream import Stream
from sabot.execution.operator_spec import agg
from sabot.nexmark.generator import AUCTION_SCHEMA, BID_SCHEMA, PERSON_SCHEMA, events

__all__ = ["QUERIES", "Views", "build", "side_input", "sequenced_events", "sources", "views_of"]

SEQ = "__seq"
WATERMARK_DELAY_MS = 4_000
SIDE_INPUT_ROWS = 10_000
_DEC_908 = pa.scalar(Decimal("0.908"), pa.decimal128(3, 3))
_PRICE_DEC = pa.decimal128(23, 3)


def sequenced_events(offset, num_rows, **config):
    """:func:`~sabot.nexmark.generator.events` plus ``__seq``, the event number (int64)."""
    batch = events(offset, num_rows, **config)
    return batch.append_column(SEQ, pa.array(np.arange(offset, offset + num_rows, dtype=np.int64)))


def _view(events_stream, kind, struct, schema):
    """``SELECT struct.*, dateTime, __seq FROM events WHERE event_type = kind``: the fields come
    out of the struct first (no copy), so the filter copies only this kind's columns."""
    ordered = {f.name: (pc.field("dateTime") if f.name == "dateTime" else pc.field(struct, f.name)) for f in schema}
    flat = events_stream.select({"event_type": pc.field("event_type"), **ordered, SEQ: pc.field(SEQ)},
                                name=f"{struct}_fields")
    return (flat.filter(pc.field("event_type") == kind, name=f"{struct}_filter")
            .select(list(ordered) + [SEQ], name=f"{struct}_view"))


class Views:
    """The person, auction and bid views of one event stream, made when a query first uses
    them (an unused view would still filter every event)."""

    def __init__(self, events_stream):
        self._events = events_stream
        self._made = {}

    def _get(self, kind, struct, schema):
        if struct not in self._made:
            self._made[struct] = _view(self._events, kind, struct, schema)
        return self._made[struct]

    @property
    def person(self):
        return self._get(0, "person", PERSON_SCHEMA)

    @property
    def auction(self):
        return self._get(1, "auction", AUCTION_SCHEMA)

    @property
    def bid(self):
        return self._get(2, "bid", BID_SCHEMA)


def sources(num_events=None, *, batch_size=8192, parallelism=None, generator=sequenced_events, **config):
    """The person, auction and bid views over one event source (``num_events=None``: unbounded).

    ``generator``: the event generator (default :func:`sequenced_events`; tests slow it down).
    """
    stream = Stream.from_generator(generator, total_rows=num_events, batch_size=batch_size,
                                   parameters=config, name="nexmark_events", parallelism=parallelism,
                                   time_column="dateTime", max_out_of_orderness=WATERMARK_DELAY_MS)
    return views_of(stream)


def views_of(events_stream):
    """The three views over any stream of :func:`sequenced_events` rows (e.g. a file of them,
    read with ``Stream.from_dataset(...).with_watermarks("dateTime", 4_000)``)."""
    return Views(events_stream)


def _price_908():
    return pc.multiply(pc.field("price").cast(pa.decimal128(20, 0)), _DEC_908).cast(_PRICE_DEC)


def _mod(field, m):
    """``field % m`` for non-negative integers (pyarrow has no modulo kernel)."""
    return pc.subtract(field, pc.multiply(pc.divide(field, m), m))


def _day(field="dateTime"):
    """DATE_FORMAT(t, 'yyyy-MM-dd'): the date's ISO text (a cast: ~20x faster than strftime)."""
    return pc.field(field).cast(pa.date32()).cast(pa.string())


def _minute(field="dateTime"):
    """DATE_FORMAT(t, 'HH:mm'): the first five characters of the time of day's ISO text."""
    return pc.utf8_slice_codeunits(pc.field(field).cast(pa.time32("ms")).cast(pa.string()), 0, 5)


def q0(v):
    """Pass-through."""
    return v.bid.select("auction", "bidder", "price", "dateTime", "extra", name="q0_result")


def q1(v):
    """Currency conversion: 0.908 * price as DECIMAL(23, 3)."""
    return v.bid.select(auction=pc.field("auction"), bidder=pc.field("bidder"), price=_price_908(),
                        dateTime=pc.field("dateTime"), extra=pc.field("extra"), name="q1_result")


def q2(v):
    """Selection: auction % 123 = 0."""
    return v.bid.filter(_mod(pc.field("auction"), 123) == 0, name="q2_filter").select("auction", "price", name="q2_result")


def q3(v):
    """Local item suggestion: a regular join of category-10 auctions with sellers in OR/ID/CA."""
    # only the columns the query reads go into the join (the projection push-down a SQL planner does)
    auctions = v.auction.filter(pc.field("category") == 10, name="q3_auctions").select("id", "seller",
                                                                                      name="q3_auction_cols")
    persons = (v.person.filter(pc.field("state").isin(["OR", "ID", "CA"]), name="q3_persons")
               .select("id", "name", "city", "state", name="q3_person_cols"))
    joined = auctions.join(persons, left_on="seller", right_on="id", name="q3_join")
    return joined.select("name", "city", "state", "id", name="q3_result")  # id: the auction's


def _winning_bids(v, prefix, auction_columns=None, bid_columns=("auction", "bidder", "price", "dateTime", "extra",
                                                                   SEQ)):
    """auction A JOIN bid B ON A.id = B.auction AND B.dateTime BETWEEN A.dateTime AND A.expires,
    with only the columns the query reads (the projection push-down a SQL planner does)."""
    auctions = v.auction if auction_columns is None else v.auction.select(*auction_columns, name=f"{prefix}_a_cols")
    bids = v.bid.select(*bid_columns, name=f"{prefix}_b_cols")
    return auctions.join(
        bids, left_on="id", right_on="auction", suffix="_bid",
        where=(pc.field("dateTime_bid") >= pc.field("dateTime")) & (pc.field("dateTime_bid") <= pc.field("expires")),
        name=f"{prefix}_join")


def q4(v):
    """Average winning price per category: join, max per (auction, category), AVG per category
    (a BIGINT average: the sum divided by the count, truncated, as Flink's AVG(BIGINT))."""
    q = (_winning_bids(v, "q4", ("id", "category", "dateTime", "expires"), ("auction", "price", "dateTime"))
         .key_by("id", "category")
         .aggregate([agg("max", "price", name="final")], name="q4_max"))
    per_category = q.key_by("category").aggregate(
        [agg("sum", "final", name="sum_final"), agg("count", "final", name="n_final")], name="q4_avg")
    return per_category.select(id=pc.field("category"), final=pc.divide(pc.field("sum_final"), pc.field("n_final")),
                               name="q4_result")


def q5(v):
    """Hot items: auctions with the most bids per HOP window (10 s every 2 s), ties kept: the
    count per (auction, window) joined with the maximum per window on num >= maxn."""
    counts = (v.bid.key_by("auction").window(10_000, [agg("count", name="num")], slide=2_000, name="q5_counts")
              .select(auction=pc.field("auction"), num=pc.field("num"), starttime=pc.field("window_start"),
                      endtime=pc.field("window_end"), name="q5_auction_bids"))
    maxima = (counts.window(window_columns=("starttime", "endtime"), aggregates=[agg("max", "num", name="maxn")],
                            name="q5_max_bids")
              .select(maxn=pc.field("maxn"), starttime=pc.field("window_start"), endtime=pc.field("window_end"),
                      name="q5_max_view"))
    joined = counts.window_join(maxima, left_on="starttime", right_on="starttime",
                                window_columns=("starttime", "endtime"), where=pc.field("num") >= pc.field("maxn"),
                                name="q5_join")
    return joined.select("auction", "num", name="q5_result")


def q7(v):
    """Highest bid: bids whose price equals the max of their 10 s tumbling window (an interval
    join on price = maxprice, B.dateTime BETWEEN B1.dateTime - 10 s AND B1.dateTime).
    The published text selects B.price, B.bidder into the sink's bidder, price columns."""
    maxima = (v.bid.select("price", "dateTime", name="q7_prices")
              .window(10_000, [agg("max", "price", name="maxprice")], name="q7_max")
              .select(maxprice=pc.field("maxprice"), dateTime=pc.field("window_end"), name="q7_b1"))
    joined = v.bid.interval_join(maxima, left_on="price", right_on="maxprice", lower=-10_000, upper=0,
                                 time_column=("dateTime", "dateTime"), name="q7_join")
    return joined.select(auction=pc.field("auction"), bidder=pc.field("price"), price=pc.field("bidder"),
                         dateTime=pc.field("dateTime"), extra=pc.field("extra"), name="q7_result")


def q8(v):
    """New users: persons who created an auction in the same 10 s tumbling window (a window
    join of two window aggregates on id = seller and equal windows)."""
    persons = (v.person.key_by("id", "name").window(10_000, [agg("count", name="n")], name="q8_persons")
               .select("id", "name", "window_start", "window_end", name="q8_p"))
    sellers = (v.auction.key_by("seller").window(10_000, [agg("count", name="n")], name="q8_sellers")
               .select("seller", "window_start", "window_end", name="q8_a"))
    joined = persons.window_join(sellers, left_on="id", right_on="seller",
                                 window_columns=("window_start", "window_end"), name="q8_join")
    return joined.select({"id": pc.field("id"), "name": pc.field("name"), "stime": pc.field("window_start")},
                         name="q8_result")


def q9(v):
    """Winning bids: per auction the bid with the highest price, then earliest time (then
    earliest arrival), among bids in [dateTime, expires]."""
    top = (_winning_bids(v, "q9").key_by("id")
           .top_n(1, [("price", "descending"), ("dateTime_bid", "ascending"), (SEQ + "_bid", "ascending")],
                  name="q9_top"))
    cols = {f.name: pc.field(f.name) for f in AUCTION_SCHEMA}
    cols.update(auction=pc.field("auction"), bidder=pc.field("bidder"), price=pc.field("price"),
                bid_dateTime=pc.field("dateTime_bid"), bid_extra=pc.field("extra_bid"))
    return top.select(**cols, name="q9_result")


def q10(v, path=None):
    """Log to file system: every bid with dt = 'yyyy-MM-dd' and hm = 'HH:mm', partitioned by
    dt and hm. With ``path`` the query ends in the partitioned file sink."""
    rows = v.bid.select(auction=pc.field("auction"), bidder=pc.field("bidder"), price=pc.field("price"),
                        dateTime=pc.field("dateTime"), extra=pc.field("extra"), dt=_day(), hm=_minute(), name="q10_result")
    return rows if path is None else rows.to_files(path, partition_by=["dt", "hm"], name="q10_sink")


def q11(v):
    """User sessions: bids per bidder session (gap 10 s)."""
    sessions = v.bid.key_by("bidder").session_window(10_000, [agg("count", name="bid_count")], name="q11_sessions")
    return sessions.select(bidder=pc.field("bidder"), bid_count=pc.field("bid_count"),
                           starttime=pc.field("window_start"), endtime=pc.field("window_end"), name="q11_result")


def q12(v, clock=None):
    """Processing-time windows: bids per bidder per 10 s tumbling window of processing time."""
    counts = v.bid.key_by("bidder").window(10_000, [agg("count", name="bid_count")], time="processing",
                                            clock=clock, name="q12_windows")
    return counts.select(bidder=pc.field("bidder"), bid_count=pc.field("bid_count"),
                         starttime=pc.field("window_start"), endtime=pc.field("window_end"), name="q12_result")


def side_input(rows=SIDE_INPUT_ROWS):
    """The q13 side input as Nexmark's SideInputGenerator writes it: (i, "i") for i < rows."""
    keys = np.arange(rows, dtype=np.int64)
    return pa.table({"key": pa.array(keys), "value": pa.array(keys.astype(str).astype(object), pa.string())})


def q13(v, side=None):
    """Bounded side input join: each bid with side_input on auction % 10000 = key."""
    side = side_input() if side is None else side
    keyed = v.bid.select("auction", "bidder", "price", "dateTime", key=_mod(pc.field("auction"), 10_000),
                         name="q13_key")
    joined = keyed.join_table(side, on="key", how="inner", name="q13_join")
    return joined.select("auction", "bidder", "price", "dateTime", "value", name="q13_result")


def q14(v):
    """Calculation: converted price in (1e6, 5e7), the hour's type and the count of 'c' in extra."""
    priced = v.bid.select("auction", "bidder", "dateTime", "extra", price=_price_908(), name="q14_price")
    kept = priced.filter((pc.field("price") > pa.scalar(Decimal(1_000_000), _PRICE_DEC))
                         & (pc.field("price") < pa.scalar(Decimal(50_000_000), _PRICE_DEC)), name="q14_filter")
    hour = pc.hour(pc.field("dateTime"))
    return kept.select(auction=pc.field("auction"), bidder=pc.field("bidder"), price=pc.field("price"),
                       bidTimeType=pc.if_else((hour >= 8) & (hour <= 18), "dayTime",
                                              pc.if_else((hour <= 6) | (hour >= 20), "nightTime", "otherTime")),
                       dateTime=pc.field("dateTime"), extra=pc.field("extra"),
                       c_counts=pc.count_substring(pc.field("extra"), "c").cast(pa.int64()), name="q14_result")


_RANKS = (("rank1", pc.field("price") < 10_000),
          ("rank2", (pc.field("price") >= 10_000) & (pc.field("price") < 1_000_000)),
          ("rank3", pc.field("price") >= 1_000_000))


def _bid_counts():
    return [agg("count", name="total_bids")] + [agg("count", name=f"{r}_bids", where=w) for r, w in _RANKS]


def _distinct_counts():
    out = []
    for column, label in (("bidder", "bidders"), ("auction", "auctions")):
        out.append(agg("count_distinct", column, name=f"total_{label}"))
        out += [agg("count_distinct", column, name=f"{r}_{label}", where=w) for r, w in _RANKS]
    return out


def q15(v):
    """Bidding statistics per day: counts with FILTER clauses and COUNT(DISTINCT)."""
    days = v.bid.select("bidder", "auction", "price", day=_day(), name="q15_day")
    return days.key_by("day").aggregate(_bid_counts() + _distinct_counts(), name="q15_result")


def q16(v):
    """Channel statistics per (channel, day), with the latest HH:mm as ``minute``."""
    days = v.bid.select("channel", "bidder", "auction", "price", day=_day(), minute=_minute(), name="q16_day")
    stats = days.key_by("channel", "day").aggregate(
        [agg("max", "minute", name="minute")] + _bid_counts() + _distinct_counts(), name="q16_result")
    return stats


def q17(v):
    """Auction statistics per (auction, day); avg_price is AVG(BIGINT): sum / count, truncated."""
    days = v.bid.select("auction", "price", day=_day(), name="q17_day")
    stats = days.key_by("auction", "day").aggregate(
        _bid_counts() + [agg("min", "price", name="min_price"), agg("max", "price", name="max_price"),
                         agg("count", "price", name="n_price"), agg("sum", "price", name="sum_price")],
        name="q17_stats")
    cols = {c: pc.field(c) for c in ("auction", "day", "total_bids", "rank1_bids", "rank2_bids", "rank3_bids",
                                     "min_price", "max_price")}
    return stats.select(**cols, avg_price=pc.divide(pc.field("sum_price"), pc.field("n_price")),
                        sum_price=pc.field("sum_price"), name="q17_result")


def q18(v):
    """Last bid per (bidder, auction): latest dateTime, then latest arrival."""
    last = v.bid.key_by("bidder", "auction").top_n(1, [("dateTime", "descending"), (SEQ, "descending")],
                                                   name="q18_top")
    return last.select("auction", "bidder", "price", "channel", "url", "dateTime", "extra", name="q18_result")


def q19(v):
    """Top 10 bids per auction by price (equal prices by arrival), with their rank."""
    top = v.bid.key_by("auction").top_n(10, [("price", "descending"), (SEQ, "ascending")],
                                        rank_column="rank_number", name="q19_top")
    return top.select("auction", "bidder", "price", "channel", "url", "dateTime", "extra", "rank_number", name="q19_result")


def q20(v):
    """Bids joined with their (category 10) auction: a regular join."""
    auctions = v.auction.filter(pc.field("category") == 10, name="q20_auctions")
    joined = v.bid.join(auctions, left_on="auction", right_on="id", suffix="_auction", name="q20_join")
    return joined.select(
        auction=pc.field("auction"), bidder=pc.field("bidder"), price=pc.field("price"),
        channel=pc.field("channel"), url=pc.field("url"), bid_dateTime=pc.field("dateTime"),
        bid_extra=pc.field("extra"), itemName=pc.field("itemName"), description=pc.field("description"),
        initialBid=pc.field("initialBid"), reserve=pc.field("reserve"),
        auction_dateTime=pc.field("dateTime_auction"), expires=pc.field("expires"), seller=pc.field("seller"),
        category=pc.field("category"), auction_extra=pc.field("extra_auction"), name="q20_result")


_CHANNEL_ID = "(?P<sep>&|^)channel_id=(?P<id>[^&]*)"


def q21(v):
    """Channel id: the hot channels' fixed ids, else the url's channel_id; others dropped."""
    lower = pc.utf8_lower(pc.field("channel"))
    from_url = pc.struct_field(pc.extract_regex(pc.field("url"), pattern=_CHANNEL_ID), "id")
    channel_id = pc.if_else(lower == "apple", "0", pc.if_else(lower == "google", "1", pc.if_else(
        lower == "facebook", "2", pc.if_else(lower == "baidu", "3", from_url))))
    kept = v.bid.filter(from_url.is_valid() | lower.isin(["apple", "google", "facebook", "baidu"]),
                        name="q21_filter")
    return kept.select("auction", "bidder", "price", "channel", channel_id=channel_id, name="q21_result")


def q22(v):
    """URL directories: fields 3, 4 and 5 of the url split on '/'."""
    parts = pc.split_pattern(pc.field("url"), pattern="/")
    return v.bid.select("auction", "bidder", "price", "channel", dir1=pc.list_element(parts, 3),
                        dir2=pc.list_element(parts, 4), dir3=pc.list_element(parts, 5), name="q22_result")


QUERIES = {name: globals()[name] for name in (f"q{i}" for i in range(23)) if name != "q6"}


def build(name, num_events=None, *, batch_size=8192, parallelism=None, path=None, clock=None,
          generator=sequenced_events, events_stream=None, **config):
    """A runnable job: the event source (or ``events_stream``), query ``name`` and a collect
    sink named ``name`` (q10 with ``path``: its partitioned file sink instead)."""
    if name not in QUERIES:
        raise ValueError(f"unknown Nexmark query {name!r}; expected one of {sorted(QUERIES)}")
    if events_stream is not None:
        views = views_of(events_stream)
    else:
        views = sources(num_events, batch_size=batch_size, parallelism=parallelism, generator=generator, **config)
    if name == "q10" and path is not None:
        return q10(views, path)
    stream = q12(views, clock) if name == "q12" else QUERIES[name](views)
    return stream.collect(name=name)
