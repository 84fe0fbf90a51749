"""The DuckDB reference queries (reference.py) against results computed another way.

Every query runs on a small generated input and must return a non-empty table with the
sink's columns. The results are then recomputed without SQL, in plain Python (dicts and
loops over the bids) or polars, from the definitions in reference.py's docstring: the
reference is only useful if it is right.
"""

import datetime as dt
import re
from collections import Counter, defaultdict
from decimal import Decimal

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

import reference as R
from sabot.nexmark import generate_tables

# 20,000 events at 100 events/s: 200 s of event time crossing midnight (two days, 20
# tumbling windows of 10 s), about 18,400 bids, 400 persons, 1,200 auctions
START = 1_704_153_500_000  # 2024-01-01T23:58:20Z
SECOND = 1000


@pytest.fixture(scope="module")
def tables():
    return generate_tables(20_000, event_rate=100, first_event_time_ms=START, seed=3)


def rows(table):
    """Rows as dicts, timestamps as epoch milliseconds."""
    cols = {}
    for name in table.column_names:
        col = table.column(name)
        cols[name] = col.cast(pa.int64()).to_pylist() if pa.types.is_timestamp(col.type) else col.to_pylist()
    return [dict(zip(cols, values)) for values in zip(*cols.values())]


def multiset(table_or_rows, columns=None):
    items = rows(table_or_rows) if isinstance(table_or_rows, pa.Table) else table_or_rows
    columns = columns or (list(items[0]) if items else [])
    return Counter(tuple(r[c] for c in columns) for r in items)


def day(ms_value):
    return dt.datetime.fromtimestamp(ms_value / 1000, dt.timezone.utc).strftime("%Y-%m-%d")


def hhmm(ms_value):
    return dt.datetime.fromtimestamp(ms_value / 1000, dt.timezone.utc).strftime("%H:%M")


@pytest.mark.parametrize("query", list(R.QUERIES))
def test_every_reference_runs_and_returns_the_sink_columns(tables, query):
    out = R.QUERIES[query](tables)
    assert out.num_rows > 0
    if query == "q12":
        assert out.schema == pa.schema([("bidder", pa.int64()), ("bid_count", pa.int64())])
    else:
        assert out.schema == R.SCHEMAS[query]


def test_input_spans_what_the_queries_need(tables):
    bids = rows(tables["bid"])
    assert len({day(b["dateTime"]) for b in bids}) == 2
    assert len({b["dateTime"] // (10 * SECOND) for b in bids}) == 20


# -- projections and filters ------------------------------------------------------------


def test_q0_q1_q2_q10_per_bid(tables):
    bids = rows(tables["bid"])
    assert rows(R.q0(tables)) == [{k: b[k] for k in ("auction", "bidder", "price", "dateTime", "extra")}
                                  for b in bids]
    q1 = rows(R.q1(tables))
    assert [r["price"] for r in q1] == [(Decimal(b["price"]) * Decimal("0.908")).quantize(Decimal("0.001"))
                                        for b in bids]
    assert rows(R.q2(tables)) == [{"auction": b["auction"], "price": b["price"]} for b in bids
                                  if b["auction"] % 123 == 0]
    q10 = rows(R.q10(tables))
    assert [(r["dt"], r["hm"]) for r in q10] == [(day(b["dateTime"]), hhmm(b["dateTime"])) for b in bids]
    assert {r["dt"] for r in q10} == {"2024-01-01", "2024-01-02"}


def test_q13_joins_the_side_input(tables):
    side = R.side_input()
    assert side.num_rows == 10_000 and side.column("value")[42].as_py() == "42"
    got = rows(R.q13(tables))
    assert [(r["auction"], r["value"]) for r in got] == [(b["auction"], str(b["auction"] % 10_000))
                                                         for b in rows(tables["bid"])]
    # a smaller side input drops the bids without a key
    small = R.q13(tables, side=R.side_input(1_005))
    assert small.num_rows == sum(1 for b in rows(tables["bid"]) if b["auction"] % 10_000 < 1_005)


def test_q14_hour_types_prices_and_counts():
    # 0.2 events/s: 20,000 events span 27.8 hours, so every hour type occurs
    t = generate_tables(20_000, event_rate=0.2, first_event_time_ms=START, seed=1)
    got = rows(R.q14(t))
    expected = []
    for b in rows(t["bid"]):
        euro = Decimal(b["price"]) * Decimal("0.908")
        if not 1_000_000 < euro < 50_000_000:
            continue
        hour = dt.datetime.fromtimestamp(b["dateTime"] / 1000, dt.timezone.utc).hour
        kind = "dayTime" if 8 <= hour <= 18 else ("nightTime" if hour <= 6 or hour >= 20 else "otherTime")
        expected.append({"auction": b["auction"], "bidder": b["bidder"], "price": euro.quantize(Decimal("0.001")),
                         "bidTimeType": kind, "dateTime": b["dateTime"], "extra": b["extra"],
                         "c_counts": b["extra"].count("c")})
    assert got == expected
    assert {r["bidTimeType"] for r in got} == {"dayTime", "nightTime", "otherTime"}


def test_q21_q22_parse_the_url(tables):
    ids = {"apple": "0", "google": "1", "facebook": "2", "baidu": "3"}
    expected21 = []
    for b in rows(tables["bid"]):
        m = re.search(r"(&|^)channel_id=([^&]*)", b["url"])
        if m or b["channel"].lower() in ids:
            cid = ids.get(b["channel"].lower(), m.group(2) if m else None)
            expected21.append((b["auction"], b["bidder"], b["price"], b["channel"], cid))
    assert [tuple(r.values()) for r in rows(R.q21(tables))] == expected21
    expected22 = []
    for b in rows(tables["bid"]):
        parts = b["url"].split("/")
        expected22.append((b["auction"], b["bidder"], b["price"], b["channel"], *[
            parts[i] if i < len(parts) else None for i in (3, 4, 5)]))
    assert [tuple(r.values()) for r in rows(R.q22(tables))] == expected22


# -- joins -------------------------------------------------------------------------------


def test_q3_q20_joins(tables):
    person = pl.from_arrow(tables["person"])
    auction = pl.from_arrow(tables["auction"])
    bid = pl.from_arrow(tables["bid"])
    q3 = (auction.filter(pl.col("category") == 10)
          .join(person.filter(pl.col("state").is_in(["OR", "ID", "CA"])), left_on="seller", right_on="id")
          .select(["name", "city", "state", "id"]))
    assert multiset(R.q3(tables)) == multiset(q3.to_arrow())
    q20 = bid.join(auction.filter(pl.col("category") == 10), left_on="auction", right_on="id", suffix="_a")
    assert R.q20(tables).num_rows == q20.height > 0
    got = multiset(R.q20(tables), ["auction", "bidder", "price", "bid_dateTime", "seller", "auction_dateTime"])
    want = Counter((r["auction"], r["bidder"], r["price"], r["dateTime"], r["seller"], r["dateTime_a"])
                   for r in rows(q20.to_arrow()))
    assert got == want


def _winners(tables):
    """auction id -> winning bid (highest price, earliest time, earliest arrival) in its window."""
    auctions = {a["id"]: a for a in rows(tables["auction"])}
    best = {}
    for seq, b in enumerate(rows(tables["bid"])):
        a = auctions.get(b["auction"])
        if a is None or not a["dateTime"] <= b["dateTime"] <= a["expires"]:
            continue
        key = (-b["price"], b["dateTime"], seq)
        if b["auction"] not in best or key < best[b["auction"]][0]:
            best[b["auction"]] = (key, b, seq)
    return auctions, best


def test_q4_q9_winning_bids(tables):
    auctions, best = _winners(tables)
    q9 = rows(R.q9(tables))
    assert len(q9) == len(best)
    for r in q9:
        _, b, _ = best[r["id"]]
        assert (r["auction"], r["bidder"], r["price"], r["bid_dateTime"], r["bid_extra"]) == (
            b["auction"], b["bidder"], b["price"], b["dateTime"], b["extra"])
        assert r["category"] == auctions[r["id"]]["category"]
    per_category = defaultdict(list)
    for aid, (_, b, _) in best.items():
        per_category[auctions[aid]["category"]].append(b["price"])
    expected = {c: sum(p) // len(p) for c, p in per_category.items()}
    assert {r["id"]: r["final"] for r in rows(R.q4(tables))} == expected


def test_q6_average_of_the_last_eleven_winners(tables):
    auctions, best = _winners(tables)
    per_seller = defaultdict(list)
    for aid, (_, b, seq) in best.items():
        per_seller[auctions[aid]["seller"]].append((b["dateTime"], seq, b["price"]))
    expected = Counter()
    for seller, wins in per_seller.items():
        wins.sort()
        for i in range(len(wins)):
            window = [p for _, _, p in wins[max(0, i - 10):i + 1]]
            expected[(seller, sum(window) // len(window))] += 1
    assert multiset(R.q6(tables)) == expected
    assert max(len(w) for w in per_seller.values()) > 11  # the 11-row window is exercised


# -- windows -----------------------------------------------------------------------------


def test_q5_hop_windows(tables):
    counts = defaultdict(Counter)
    for b in rows(tables["bid"]):
        last_start = b["dateTime"] - b["dateTime"] % 2000
        for start in range(last_start, b["dateTime"] - 10_000, -2000):
            counts[start][b["auction"]] += 1
    expected = Counter()
    for start, per_auction in counts.items():
        top = max(per_auction.values())
        for auction, num in per_auction.items():
            if num >= top:
                expected[(auction, num)] += 1
    assert multiset(R.q5(tables)) == expected
    windowed = rows(R.q5(tables, with_window=True))
    assert len({r["window_start"] for r in windowed}) == len(counts)


def test_q7_highest_bid_per_tumbling_window(tables):
    bids = rows(tables["bid"])
    top = defaultdict(int)
    for b in bids:
        end = b["dateTime"] - b["dateTime"] % 10_000 + 10_000
        top[end] = max(top[end], b["price"])
    expected = Counter()
    for end, price in top.items():
        for b in bids:
            if b["price"] == price and end - 10_000 <= b["dateTime"] <= end:
                # positional insert: the sink's bidder gets the price, price gets the bidder
                expected[(b["auction"], b["price"], b["bidder"], b["dateTime"])] += 1
    assert multiset(R.q7(tables), ["auction", "bidder", "price", "dateTime"]) == expected


def test_q8_new_users(tables):
    people = {(p["id"], p["name"], p["dateTime"] // 10_000) for p in rows(tables["person"])}
    sellers = {(a["seller"], a["dateTime"] // 10_000) for a in rows(tables["auction"])}
    expected = Counter((pid, name, w * 10_000) for pid, name, w in people if (pid, w) in sellers)
    assert multiset(R.q8(tables)) == expected


def test_q11_sessions(tables):
    times = defaultdict(list)
    for b in rows(tables["bid"]):
        times[b["bidder"]].append(b["dateTime"])
    expected = Counter()
    for bidder, ts in times.items():
        ts.sort()
        first = prev = ts[0]
        count = 1
        for t in ts[1:]:
            if t - prev > 10_000:  # windows [t, t + 10 s) that only touch still merge
                expected[(bidder, count, first, prev + 10_000)] += 1
                first, count = t, 0
            count += 1
            prev = t
        expected[(bidder, count, first, prev + 10_000)] += 1
    assert multiset(R.q11(tables)) == expected
    assert any(c > 1 for (_, c, _, _) in expected) and sum(expected.values()) > len(times)


def test_q11_a_gap_of_exactly_ten_seconds_continues_the_session():
    t = {k: v.slice(0, 0) for k, v in generate_tables(100).items()}
    stamps = pa.array([0, 10_000, 20_001, 20_001, 35_000], pa.timestamp("ms"))
    t["bid"] = pa.table({"auction": [1] * 5, "bidder": [7] * 5, "price": [1] * 5, "channel": ["c"] * 5,
                         "url": ["u"] * 5, "dateTime": stamps, "extra": [""] * 5},
                        schema=t["bid"].schema)
    assert [(r["bid_count"], r["starttime"], r["endtime"]) for r in rows(R.q11(t))] == [
        (2, 0, 20_000), (2, 20_001, 30_001), (1, 35_000, 45_000)]


# -- q12 ---------------------------------------------------------------------------------


def test_q12_checks_what_every_processing_time_run_agrees_on(tables):
    totals = Counter(b["bidder"] for b in rows(tables["bid"]))
    assert dict(zip(*[R.q12(tables).column(c).to_pylist() for c in ("bidder", "bid_count")])) == totals
    # a simulated clock: processing time = event time + 3.5 s, plus a stall of 7 s halfway
    bids = tables["bid"]
    event_ms = bids.column("dateTime").cast(pa.int64()).to_numpy()
    proc = event_ms + 3_500 + np.where(np.arange(bids.num_rows) > bids.num_rows // 2, 7_000, 0)
    out = R.q12_with_proctime(tables, proc)
    R.check_q12(out, tables)
    windows = Counter()
    for b, p in zip(rows(bids), proc):
        windows[(b["bidder"], int(p) - int(p) % 10_000)] += 1
    assert multiset(out, ["bidder", "starttime", "bid_count"]) == Counter(
        (bidder, start, n) for (bidder, start), n in windows.items())
    # the check rejects a lost row, a misaligned window and a split window
    with pytest.raises(AssertionError, match="totals"):
        R.check_q12(out.slice(1), tables)
    shifted = out.set_column(2, "starttime", pa.array(out.column("starttime").cast(pa.int64()).to_numpy() + 1,
                                                      pa.int64()).cast(pa.timestamp("ms")))
    with pytest.raises(AssertionError, match="aligned"):
        R.check_q12(shifted, tables)
    with pytest.raises(AssertionError, match="more than one row"):
        R.check_q12(pa.concat_tables([out, out.slice(0, 1)]), tables)


# -- aggregates --------------------------------------------------------------------------


def _rank_stats(frame, keys):
    return frame.group_by(keys).agg(
        pl.len().alias("total_bids"),
        (pl.col("price") < 10_000).sum().alias("rank1_bids"),
        ((pl.col("price") >= 10_000) & (pl.col("price") < 1_000_000)).sum().alias("rank2_bids"),
        (pl.col("price") >= 1_000_000).sum().alias("rank3_bids"),
        pl.col("bidder").n_unique().alias("total_bidders"),
        pl.col("bidder").filter(pl.col("price") < 10_000).n_unique().alias("rank1_bidders"),
        pl.col("bidder").filter((pl.col("price") >= 10_000) & (pl.col("price") < 1_000_000)).n_unique()
        .alias("rank2_bidders"),
        pl.col("bidder").filter(pl.col("price") >= 1_000_000).n_unique().alias("rank3_bidders"),
        pl.col("auction").n_unique().alias("total_auctions"),
        pl.col("auction").filter(pl.col("price") < 10_000).n_unique().alias("rank1_auctions"),
        pl.col("auction").filter((pl.col("price") >= 10_000) & (pl.col("price") < 1_000_000)).n_unique()
        .alias("rank2_auctions"),
        pl.col("auction").filter(pl.col("price") >= 1_000_000).n_unique().alias("rank3_auctions"),
        pl.col("minute").max().alias("minute"),
        pl.col("price").min().alias("min_price"),
        pl.col("price").max().alias("max_price"),
        pl.col("price").sum().alias("sum_price"),
    )


def test_q15_q16_q17_statistics(tables):
    bid = pl.from_arrow(tables["bid"]).with_columns(
        pl.col("dateTime").dt.strftime("%Y-%m-%d").alias("day"),
        pl.col("dateTime").dt.strftime("%H:%M").alias("minute"))
    for query, keys in (("q15", ["day"]), ("q16", ["channel", "day"]), ("q17", ["auction", "day"])):
        want = _rank_stats(bid, keys)
        if query == "q17":
            want = want.with_columns((pl.col("sum_price") // pl.col("total_bids")).alias("avg_price"))
        got = pl.from_arrow(R.QUERIES[query](tables))
        columns = got.columns
        want = want.select(columns).sort(keys)
        assert got.sort(keys).cast(want.schema).equals(want), query


# -- top-N and deduplication -------------------------------------------------------------


def _with_coarse_prices(tables):
    """The same input with prices rounded down to 10^6 steps: many equal prices per auction."""
    bid = tables["bid"]
    coarse = pa.array(bid.column("price").to_numpy() // 1_000_000 * 1_000_000)
    return {**tables, "bid": bid.set_column(bid.schema.get_field_index("price"), "price", coarse)}


def test_q18_last_bid_per_bidder_and_auction(tables):
    # at 10,000 events/s ten events share each millisecond: equal times are common
    for t in (tables, generate_tables(20_000, seed=3)):
        last = {}
        for b in rows(t["bid"]):
            key = (b["bidder"], b["auction"])
            if key not in last or b["dateTime"] >= last[key]["dateTime"]:  # equal time: the later arrival
                last[key] = b
        assert multiset(R.q18(t)) == multiset(list(last.values()), R.SCHEMAS["q18"].names)
    times = Counter((b["bidder"], b["auction"], b["dateTime"]) for b in rows(t["bid"]))
    assert max(times.values()) > 1


def test_q19_top_ten_by_price_with_arrival_order_for_ties(tables):
    for t in (tables, _with_coarse_prices(tables)):
        per_auction = defaultdict(list)
        for seq, b in enumerate(rows(t["bid"])):
            per_auction[b["auction"]].append((-b["price"], seq, b))
        expected = []
        for auction in sorted(per_auction):
            for rank, (_, _, b) in enumerate(sorted(per_auction[auction], key=lambda x: x[:2])[:10], start=1):
                expected.append({**b, "rank_number": rank})
        assert rows(R.q19(t)) == expected
        assert any(len(v) > 10 for v in per_auction.values())


def test_q9_ties_on_price_go_to_the_earliest_bid(tables):
    t = _with_coarse_prices(tables)
    _, best = _winners(t)
    got = {r["id"]: (r["bidder"], r["bid_dateTime"], r["bid_extra"]) for r in rows(R.q9(t))}
    assert got == {aid: (b["bidder"], b["dateTime"], b["extra"]) for aid, (_, b, _) in best.items()}
    ties = Counter((b["auction"], b["price"]) for b in rows(t["bid"]))
    assert max(ties.values()) > 1


def test_q9_ties_on_price_and_time_go_to_the_first_arrival():
    # 10,000 events/s and coarse prices: equal (price, time) pairs within an auction
    t = _with_coarse_prices(generate_tables(20_000, seed=3))
    _, best = _winners(t)
    got = {r["id"]: (r["bidder"], r["bid_extra"]) for r in rows(R.q9(t))}
    assert got == {aid: (b["bidder"], b["extra"]) for aid, (_, b, _) in best.items()}
    ties = Counter((b["auction"], b["price"], b["dateTime"]) for b in rows(t["bid"]))
    assert max(ties.values()) > 1


def _bids(schema, rows_):
    cols = list(zip(*rows_))
    return pa.table({"auction": cols[0], "bidder": cols[1], "price": cols[2], "channel": ["c"] * len(rows_),
                     "url": ["u"] * len(rows_), "dateTime": pa.array(cols[3], pa.timestamp("ms")),
                     "extra": [f"e{i}" for i in range(len(rows_))]}, schema=schema)


def test_q7_window_bounds_are_inclusive_at_both_ends():
    t = {k: v.slice(0, 0) for k, v in generate_tables(100).items()}
    # window [0, 10 s): max 5; [10 s, 20 s): max 9; [20 s, 30 s): max 9 (the bid at 20 s)
    t["bid"] = _bids(t["bid"].schema, [(1, 11, 5, 0), (2, 12, 3, 4_000), (3, 13, 5, 9_999),
                                       (4, 14, 5, 10_000), (5, 15, 9, 15_000), (6, 16, 5, 20_000),
                                       (7, 17, 8, 25_000), (8, 18, 9, 20_000)])
    got = sorted((r["auction"], r["dateTime"]) for r in rows(R.q7(t)))
    # the join's BETWEEN window_end - 10 s AND window_end is inclusive at both ends: t = 10 s
    # (second window) also matches the first window's max 5, and the price-9 bid at t = 20 s
    # matches both the second window and its own, so it is emitted twice
    assert got == [(1, 0), (3, 9_999), (4, 10_000), (5, 15_000), (8, 20_000), (8, 20_000)]
    assert [(r["bidder"], r["price"]) for r in rows(R.q7(t)) if r["auction"] == 5] == [(9, 15)]
