"""The Nexmark generator against facts computed independently from the reference rules.

The reference rules (GeneratorConfig, PersonGenerator, AuctionGenerator, BidGenerator,
StringsGenerator, PriceGenerator of nexmark/nexmark's nexmark-flink) are re-derived here
by a plain per-event Python walk over the event sequence (how many persons and auctions
exist before each event), not by the generator's closed forms; expected shares and
tolerances follow from those rules, and joins are checked with DuckDB.
"""

import math
import re
from fractions import Fraction

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sabot import Stream
from sabot.nexmark import (
    AUCTION_SCHEMA,
    BID_SCHEMA,
    EVENT_SCHEMA,
    PERSON_SCHEMA,
    auctions,
    bids,
    event_numbers,
    events,
    generate_tables,
    kind_counts,
    persons,
    published_sql,
)
from sabot.nexmark import generator as gen
from sabot.testing import run_stream

BASE = 1_704_067_200_000
FIRST_NAMES = "Peter,Paul,Luke,John,Saul,Vicky,Kate,Julie,Sarah,Deiter,Walter".split(",")
LAST_NAMES = "Shultz,Abrams,Spencer,White,Bartels,Walton,Smith,Jones,Noris".split(",")
CITIES = "Phoenix,Los Angeles,San Francisco,Boise,Portland,Bend,Redmond,Seattle,Kent,Cheyenne".split(",")
STATES = "AZ,CA,ID,OR,WA,WY".split(",")
HOT_CHANNELS = ["Google", "Facebook", "Baidu", "Apple"]


def walk(num_events, proportions=(1, 3, 46)):
    """Per event: (kind, persons generated before or at it, auctions before or at it).

    A direct simulation of the sequence: event n's kind is decided by n mod 50, and the
    counters say which ids exist when event n is generated.
    """
    p, a, b = proportions
    total = p + a + b
    kinds, persons_so_far, auctions_so_far = [], [], []
    n_p = n_a = 0
    for n in range(num_events):
        rem = n % total
        kind = 0 if rem < p else (1 if rem < p + a else 2)
        if kind == 0:
            n_p += 1
        elif kind == 1:
            n_a += 1
        kinds.append(kind)
        persons_so_far.append(n_p)
        auctions_so_far.append(n_a)
    return np.array(kinds), np.array(persons_so_far), np.array(auctions_so_far)


def within(observed, expected_p, label):
    """``observed`` successes against per-trial probabilities: within 5 standard deviations."""
    expected_p = np.asarray(expected_p, dtype=float)
    mean = expected_p.sum()
    sd = math.sqrt((expected_p * (1 - expected_p)).sum())
    assert abs(observed - mean) <= 5 * sd + 1e-9, f"{label}: observed {observed}, expected {mean:.1f} +- {5 * sd:.1f}"


def ms(column):
    return column.cast(pa.int64()).to_numpy()


# -- kinds, ids, event numbers ---------------------------------------------------------------


@pytest.mark.parametrize("proportions", [(1, 3, 46), (2, 5, 13)])
def test_kinds_follow_the_event_number_exactly(proportions):
    p, a, b = proportions
    total = p + a + b
    config = dict(person_proportion=p, auction_proportion=a, bid_proportion=b)
    num = total * 120
    kinds = events(0, num, **config).column("event_type").to_numpy()
    expected, _, _ = walk(num, proportions)
    assert (kinds == expected).all()
    per_block = kinds.reshape(-1, total)
    for kind, share in enumerate(proportions):
        assert ((per_block == kind).sum(axis=1) == share).all()
    # any window of `total` consecutive events, wherever it starts, has exactly p:a:b
    shifted = events(17, total * 40, **config).column("event_type").to_numpy().reshape(-1, total)
    assert [int((shifted == k).sum(axis=1).max()) for k in range(3)] == list(proportions)
    assert [int((shifted == k).sum(axis=1).min()) for k in range(3)] == list(proportions)
    assert kind_counts(num + 3, config) == tuple(int(c) for c in np.bincount(walk(num + 3, proportions)[0],
                                                                          minlength=3))


def test_ids_are_sequential_per_kind_and_match_the_combined_stream():
    num = 5000
    ev = events(0, num)
    kinds = ev.column("event_type").to_numpy()
    counts = kind_counts(num)
    for kind, (field, fn, schema) in enumerate((("person", persons, PERSON_SCHEMA),
                                                 ("auction", auctions, AUCTION_SCHEMA),
                                                 ("bid", bids, BID_SCHEMA))):
        positions = np.flatnonzero(kinds == kind)
        assert (event_numbers(kind, np.arange(counts[kind])) == positions).all()
        from_events = pa.Table.from_struct_array(ev.column(field).filter(pa.array(kinds == kind)))
        direct = pa.Table.from_batches([fn(0, counts[kind])])
        assert from_events.equals(direct.cast(from_events.schema))
        if kind != 2:
            assert direct.column("id").to_pylist() == list(range(1000, 1000 + counts[kind]))
        # rows of other kinds are null in this struct
        assert ev.column(field).null_count == num - counts[kind]
    assert (ms(ev.column("dateTime")) == np.where(
        kinds == 0, ms(pc.struct_field(ev.column("person"), "dateTime").fill_null(0)), 0)
        + np.where(kinds == 1, ms(pc.struct_field(ev.column("auction"), "dateTime").fill_null(0)), 0)
        + np.where(kinds == 2, ms(pc.struct_field(ev.column("bid"), "dateTime").fill_null(0)), 0)).all()


# -- determinism ------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fn=st.sampled_from([persons, auctions, bids, events]),
       offset=st.one_of(st.integers(0, 5000), st.integers(0, 10 ** 12)),
       num=st.integers(0, 300),
       cuts=st.lists(st.integers(0, 300), max_size=4),
       seed=st.integers(0, 3))
def test_any_split_of_the_sequence_gives_the_same_rows(fn, offset, num, cuts, seed):
    whole = fn(offset, num, seed=seed)
    bounds = sorted({0, num, *[c for c in cuts if c <= num]})
    pieces = [fn(offset + lo, hi - lo, seed=seed) for lo, hi in zip(bounds, bounds[1:])]
    assert whole.num_rows == num
    joined = pa.Table.from_batches(pieces, schema=whole.schema).combine_chunks()
    assert joined.equals(pa.Table.from_batches([whole]).combine_chunks())


def test_same_seed_same_rows_other_seed_other_rows():
    a, b, c = bids(100, 2000, seed=1), bids(100, 2000, seed=1), bids(100, 2000, seed=2)
    assert a.equals(b)
    for column in ("bidder", "price", "channel", "extra"):
        assert a.column(column).to_pylist() != c.column(column).to_pylist()
    # the id arithmetic does not depend on the seed, only the draws do
    assert a.column("dateTime").equals(c.column("dateTime"))


def test_the_string_view_fast_path_and_the_numpy_fallback_agree(monkeypatch):
    fast = {fn.__name__: fn(321, 2000) for fn in (persons, auctions, bids, events)}
    monkeypatch.setattr(gen, "_USE_STRING_VIEW", False)
    gen._channel_table.cache_clear()
    gen._name_table.cache_clear()
    try:
        slow = {fn.__name__: fn(321, 2000) for fn in (persons, auctions, bids, events)}
    finally:
        gen._channel_table.cache_clear()
        gen._name_table.cache_clear()
    for name in fast:
        assert fast[name].equals(slow[name]), name


# -- references between events ----------------------------------------------------------------


def _reference_positions(num, **config):
    """DuckDB over the combined stream: every reference with the event numbers involved."""
    ev = pa.Table.from_batches([events(0, num, **config)])
    ev = ev.append_column("n", pa.array(np.arange(num, dtype=np.int64)))
    con = duckdb.connect()
    con.register("ev", ev)
    con.execute("""
        CREATE VIEW p AS SELECT n, person.id AS id FROM ev WHERE event_type = 0;
        CREATE VIEW a AS SELECT n, auction.id AS id, auction.seller AS seller FROM ev WHERE event_type = 1;
        CREATE VIEW b AS SELECT n, bid.auction AS auction, bid.bidder AS bidder FROM ev WHERE event_type = 2;
    """)
    return con


def test_strict_ids_reference_only_events_generated_before():
    con = _reference_positions(60_000, id_lead=0)
    assert con.sql("SELECT count(*) - count(DISTINCT id) FROM p").fetchall()[0][0] == 0
    assert con.sql("SELECT count(*) - count(DISTINCT id) FROM a").fetchall()[0][0] == 0
    dangling = {
        "bid.auction": "SELECT count(*) FROM b LEFT JOIN a ON a.id = b.auction AND a.n < b.n WHERE a.id IS NULL",
        "bid.bidder": "SELECT count(*) FROM b LEFT JOIN p ON p.id = b.bidder AND p.n < b.n WHERE p.id IS NULL",
        "auction.seller": "SELECT count(*) FROM a LEFT JOIN p ON p.id = a.seller AND p.n < a.n WHERE p.id IS NULL",
    }
    assert {k: con.sql(q).fetchall()[0][0] for k, q in dangling.items()} == {k: 0 for k in dangling}
    assert con.sql("SELECT count(*) FROM b").fetchall()[0][0] == kind_counts(60_000)[2]


def test_reference_leads_point_at_most_id_lead_ahead():
    """Default (the reference): a cold draw may name one of the next 10 ids, never further."""
    con = _reference_positions(60_000)
    ahead = con.sql("""
        WITH lp AS (SELECT b.n, b.bidder, (SELECT max(id) FROM p WHERE p.n < b.n) AS last FROM b),
             la AS (SELECT b.n, b.auction, (SELECT max(id) FROM a WHERE a.n < b.n) AS last FROM b),
             ls AS (SELECT a.n, a.seller, (SELECT max(id) FROM p WHERE p.n < a.n) AS last FROM a)
        SELECT (SELECT max(bidder - last) FROM lp), (SELECT count(*) FILTER (WHERE bidder > last) FROM lp),
               (SELECT max(auction - last) FROM la), (SELECT count(*) FILTER (WHERE auction > last) FROM la),
               (SELECT max(seller - last) FROM ls), (SELECT count(*) FILTER (WHERE seller > last) FROM ls)
    """).fetchall()[0]
    max_bidder, n_bidder, max_auction, n_auction, max_seller, n_seller = ahead
    assert 0 < max_bidder <= 10 and 0 < max_auction <= 10 and 0 < max_seller <= 10
    assert n_bidder > 0 and n_auction > 0 and n_seller > 0


# -- id arithmetic and hot ratios -------------------------------------------------------------


@pytest.mark.parametrize("config", [{}, {"hot_auction_ratio": 10, "hot_bidders_ratio": 3, "hot_sellers_ratio": 7,
                                         "num_active_people": 50, "num_in_flight_auctions": 20, "id_lead": 3}])
def test_bid_and_auction_references_follow_the_reference_rules(config):
    num = 150_000
    cfg = gen.NexmarkConfig(**config)
    kinds, persons_so_far, auctions_so_far = walk(num)
    lead = cfg.id_lead
    bid_rows = np.flatnonzero(kinds == 2)
    table = generate_tables(num, **config)
    auction_ids = table["bid"].column("auction").to_numpy() - 1000
    bidder_ids = table["bid"].column("bidder").to_numpy() - 1000
    last_a = auctions_so_far[bid_rows] - 1
    last_p = persons_so_far[bid_rows] - 1

    # auction: hot = first of the current batch of 100, else uniform in the in-flight window + lead
    hot_a = (last_a // 100) * 100
    low_a = np.maximum(last_a - cfg.num_in_flight_auctions, 0)
    cold_a = (auction_ids >= low_a) & (auction_ids <= last_a + lead)
    assert ((auction_ids == hot_a) | cold_a).all()
    span_a = last_a + lead - low_a + 1
    r = cfg.hot_auction_ratio
    p_hot_a = (r - 1) / r + np.where((hot_a >= low_a) & (hot_a <= last_a + lead), 1 / span_a, 0) / r
    within(int((auction_ids == hot_a).sum()), p_hot_a, "bids on the hot auction")

    # bidder: hot = second person of the current batch of 100, else an active person + lead
    hot_b = (last_p // 100) * 100 + 1
    active = np.minimum(last_p + 1, cfg.num_active_people)
    low_b = last_p + 1 - active
    assert ((bidder_ids == hot_b) | ((bidder_ids >= low_b) & (bidder_ids <= last_p + lead))).all()
    r = cfg.hot_bidders_ratio
    p_hot_b = (r - 1) / r + np.where((hot_b >= low_b) & (hot_b <= last_p + lead), 1 / (active + lead), 0) / r
    within(int((bidder_ids == hot_b).sum()), p_hot_b, "bids by the hot bidder")

    # seller: hot = first person of the current batch of 100
    auction_rows = np.flatnonzero(kinds == 1)
    seller_ids = table["auction"].column("seller").to_numpy() - 1000
    last_p = persons_so_far[auction_rows] - 1
    hot_s = (last_p // 100) * 100
    active = np.minimum(last_p + 1, cfg.num_active_people)
    low_s = last_p + 1 - active
    assert ((seller_ids == hot_s) | ((seller_ids >= low_s) & (seller_ids <= last_p + lead))).all()
    r = cfg.hot_sellers_ratio
    p_hot_s = (r - 1) / r + np.where(hot_s >= low_s, 1 / (active + lead), 0) / r
    within(int((seller_ids == hot_s).sum()), p_hot_s, "auctions by the hot seller")
    # auction ids: 1000 + k for the k-th auction
    assert (table["auction"].column("id").to_numpy() == 1000 + auctions_so_far[auction_rows] - 1).all()


# -- sizes ------------------------------------------------------------------------------------


def _length(table, column):
    return pc.utf8_length(table.column(column)).to_numpy().astype(np.int64)


def _java_round(x):
    return np.floor(np.asarray(x, dtype=float) + 0.5).astype(np.int64)


def _check_padding(current, extra_len, avg, label):
    """nextExtra: extra within [desired - delta, desired + delta - 1]; mean size avg - 0.5."""
    desired = avg - current
    delta = _java_round(desired * 0.2)
    assert (extra_len >= desired - delta).all() and (extra_len <= desired + delta - 1).all(), label
    # both ends of the range are reached (the range is the rule, not just a bound)
    assert (extra_len - (desired - delta)).min() == 0 and (desired + delta - 1 - extra_len).min() == 0, label
    size = current + extra_len
    se = size.std() / math.sqrt(len(size))
    assert abs(size.mean() - (avg - 0.5)) <= 5 * se + 1e-9, \
        f"{label}: mean size {size.mean():.2f}, expected {avg - 0.5}"


def test_average_sizes_match_the_reference_sizes():
    t = generate_tables(200_000)
    person, auction, bid = t["person"], t["auction"], t["bid"]
    current = 8 + sum(_length(person, c) for c in ("name", "emailAddress", "creditCard", "city", "state"))
    _check_padding(current, _length(person, "extra"), 200, "person")
    current = 8 + _length(auction, "itemName") + _length(auction, "description") + 8 * 5
    _check_padding(current, _length(auction, "extra"), 500, "auction")
    _check_padding(np.full(bid.num_rows, 32), _length(bid, "extra"), 100, "bid")
    # a bid: desired 68, delta round(13.6) = 14, so 54 + nextInt(28)
    assert set(np.unique(_length(bid, "extra"))) == set(range(54, 82))
    # other averages follow the same rule
    t = generate_tables(50_000, avg_bid_bytes=300, avg_person_bytes=60)
    _check_padding(np.full(t["bid"].num_rows, 32), _length(t["bid"], "extra"), 300, "bid 300")
    # a person already bigger than the average gets no padding
    person = t["person"]
    current = 8 + sum(_length(person, c) for c in ("name", "emailAddress", "creditCard", "city", "state"))
    extra = _length(person, "extra")
    big = current > 60
    assert big.any() and (~big).any()
    assert (extra[big] == 0).all()
    desired = 60 - current[~big]
    delta = _java_round(desired * 0.2)
    assert (extra[~big] >= desired - delta).all() and (extra[~big] <= desired + np.maximum(delta - 1, 0)).all()


# -- time -------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [10_000, 1_000, 7, 3])
def test_timestamps_advance_at_a_constant_rate(rate):
    num = 20_000
    got = ms(events(0, num, event_rate=rate, first_event_time_ms=BASE).column("dateTime"))
    if 1_000_000 % rate == 0:  # an integral delay in microseconds: exact arithmetic
        delay = Fraction(1_000_000, rate)
    else:  # GeneratorConfig: (long)(n * interEventDelayUs) / 1000 in double arithmetic
        delay = 1_000_000.0 / rate
    expected = BASE + np.array([int(k * delay) // 1000 for k in range(num)])
    assert (got == expected).all()
    assert (np.diff(got) >= 0).all()
    if rate == 1_000:
        assert (np.diff(got) == 1).all()
    if rate == 10_000:
        assert (np.bincount(got - BASE) == 10).all()
    # a bid generated on its own carries the time of its event number
    k = np.arange(0, 3000, 7)
    alone = [bids(int(i), 1, event_rate=rate, first_event_time_ms=BASE) for i in k]
    assert (ms(pa.Table.from_batches(alone).column("dateTime")) == expected[event_numbers(2, k)]).all()


def test_auction_expiry_follows_the_in_flight_horizon():
    rate = 10_000
    a = auctions(0, 30_000, event_rate=rate)
    n = event_numbers(1, np.arange(30_000))
    start = ms(a.column("dateTime")) - BASE
    assert (start == n // 10).all()
    # horizon: time until 100 * 50 // 3 = 1666 events later
    horizon = (n + 1666) // 10 - n // 10
    length = ms(a.column("expires")) - ms(a.column("dateTime"))
    assert (length >= 1).all() and (length <= 2 * horizon).all()
    se = length.std() / math.sqrt(len(length))
    assert abs(length.mean() - (horizon.mean() + 0.5)) <= 5 * se


# -- values -----------------------------------------------------------------------------------


def test_prices_follow_ten_to_the_six_u():
    price = bids(0, 200_000).column("price").to_numpy()
    assert price.min() == 100 and price.max() <= 100_000_000
    # Math.round: price 100 iff 10 ** (6u) * 100 < 100.5
    within(int((price == 100).sum()), np.full(len(price), math.log10(1.005) / 6), "prices of exactly 100")
    for limit in (1_000, 10_000, 100_000, 1_000_000, 10_000_000):
        # P(round(10 ** (6u) * 100) < limit) = P(10 ** (6u) * 100 < limit - 0.5)
        p = math.log10((limit - 0.5) / 100) / 6
        within(int((price < limit).sum()), np.full(len(price), p), f"prices below {limit}")
    a = auctions(0, 50_000)
    initial, reserve = a.column("initialBid").to_numpy(), a.column("reserve").to_numpy()
    assert (initial >= 100).all() and (reserve - initial >= 100).all()
    category = a.column("category").to_numpy()
    assert set(np.unique(category)) == {10, 11, 12, 13, 14}
    for c in range(10, 15):
        within(int((category == c).sum()), np.full(len(category), 0.2), f"category {c}")


def test_person_fields_follow_the_reference_vocabulary():
    p = persons(0, 20_000).to_pydict()
    combos = {f"{f} {last}" for f in FIRST_NAMES for last in LAST_NAMES}
    assert set(p["name"]) <= combos and len(set(p["name"])) == len(combos)
    assert set(p["city"]) == set(CITIES) and set(p["state"]) == set(STATES)
    assert all(re.fullmatch(r"\d{4} \d{4} \d{4} \d{4}", c) for c in p["creditCard"])
    # email = nextString(7) + "@" + nextString(5) + ".com"; each part trimmed, <= 6 / 4 chars
    for email in p["emailAddress"]:
        m = re.fullmatch(r"([a-z ]{0,6})@([a-z ]{0,4})\.com", email)
        assert m and m.group(1) == m.group(1).strip() and m.group(2) == m.group(2).strip(), email


def test_auction_strings_are_trimmed_random_strings():
    a = auctions(0, 50_000).to_pydict()
    for column, max_len in (("itemName", 19), ("description", 99)):
        values = a[column]
        assert all(re.fullmatch(r"[a-z ]*", v) and v == v.strip() and len(v) <= max_len for v in values)
        lengths = np.array([len(v) for v in values])
        # 3 + nextInt(max - 2) characters before trimming: untrimmed strings spread over
        # [3, max], trimming removes about 2/13 of a character per string on average
        assert lengths.max() == max_len
        expected = (3 + max_len) / 2 - 2 / 13
        assert abs(lengths.mean() - expected) < 0.3, (column, lengths.mean(), expected)
        inner = "".join(v[1:-1] for v in values)
        within(inner.count(" "), np.full(len(inner), 1 / 13), f"spaces in {column}")


def _java_channel_id(c):
    """Math.abs(Integer.reverse(c)) in Java int arithmetic, spelled out with strings."""
    v = int(format(c, "032b")[::-1], 2)
    v = v - (1 << 32) if v >= 1 << 31 else v
    return v if v == -(1 << 31) else abs(v)


def test_channels_and_urls_follow_the_bid_generator():
    b = bids(0, 100_000).to_pydict()
    hot = [c in HOT_CHANNELS for c in b["channel"]]
    within(sum(hot), np.full(len(hot), 0.5), "bids on hot channels")
    url_of = {}
    for channel, url in zip(b["channel"], b["url"]):
        assert url_of.setdefault(channel, url) == url, "a channel has one URL"
        m = re.fullmatch(r"https://www\.nexmark\.com/([a-z_]{3,4})/([a-z_]{3,4})/([a-z_]{3,4})/item\.htm\?query=1"
                         r"(&channel_id=(-?\d+))?", url)
        assert m, url
        if channel in HOT_CHANNELS:
            assert m.group(4) is None
        else:
            number = int(re.fullmatch(r"channel-(\d+)", channel).group(1))
            assert 0 <= number < 10_000
            if m.group(4):
                assert int(m.group(5)) == _java_channel_id(number)
    cold = [c for c in url_of if c not in HOT_CHANNELS]
    with_id = sum("channel_id" in url_of[c] for c in cold)
    within(with_id, np.full(len(cold), 0.9), "cold channels with a channel_id")
    assert set(url_of) >= set(HOT_CHANNELS) and len(cold) > 9000
    assert _java_channel_id(1) == -(1 << 31) == gen.java_channel_id(1)
    assert [_java_channel_id(c) for c in range(50)] == gen.java_channel_id(np.arange(50)).tolist()


# -- schema -----------------------------------------------------------------------------------

_DDL_TYPES = {"BIGINT": pa.int64(), "VARCHAR": pa.string(), "TIMESTAMP(3)": pa.timestamp("ms"), "INT": pa.int32()}


def _ddl_schemas():
    """The row types of the published ddl_gen.sql, as Arrow schemas."""
    ddl = published_sql("ddl_gen")
    rows = {}
    for name, body in re.findall(r"(\w+) ROW<(.*?)>", ddl, flags=re.S):
        fields = []
        for line in body.split(","):
            col, typ = line.split()
            fields.append((col.strip("`"), _DDL_TYPES[typ.upper()]))
        rows[name] = pa.schema(fields)
    event_type = re.search(r"\(\s*event_type (\w+),", ddl).group(1)
    return rows, _DDL_TYPES[event_type.upper()]


def test_schemas_equal_the_published_ddl():
    rows, event_type = _ddl_schemas()
    assert set(rows) == {"person", "auction", "bid"}
    assert rows["person"] == PERSON_SCHEMA and persons(0, 3).schema == PERSON_SCHEMA
    assert rows["auction"] == AUCTION_SCHEMA and auctions(0, 3).schema == AUCTION_SCHEMA
    assert rows["bid"] == BID_SCHEMA and bids(0, 3).schema == BID_SCHEMA
    expected = pa.schema([("event_type", event_type)]
                         + [(k, pa.struct(list(rows[k]))) for k in ("person", "auction", "bid")]
                         + [("dateTime", pa.timestamp("ms"))])
    assert EVENT_SCHEMA == expected and events(0, 60).schema == expected
    assert events(0, 0).schema == expected and bids(5, 0).num_rows == 0
    # the published views select the struct fields in this order
    views = published_sql("ddl_views")
    for name, schema in (("person", PERSON_SCHEMA), ("auction", AUCTION_SCHEMA), ("bid", BID_SCHEMA)):
        body = re.search(rf"CREATE VIEW {name} AS\s+SELECT(.*?)FROM", views, flags=re.S).group(1)
        cols = [c.strip().split(".")[-1].strip("`") for c in body.split(",")]
        assert cols == schema.names


def test_published_sql_files_are_all_there():
    for i in range(23):
        text = published_sql(f"q{i}")
        assert f"nexmark_q{i}" in text and "INSERT INTO" in text
        assert "attribution" not in text.lower()  # the header is left out
    with pytest.raises(ValueError, match="q23"):
        published_sql("q23")


# -- parameters and Sabot -----------------------------------------------------------------


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="unknown parameter.*colour"):
        bids(0, 3, colour=1)
    with pytest.raises(ValueError, match="event_rate"):
        bids(0, 3, event_rate=0)
    with pytest.raises(ValueError, match="bid_proportion"):
        events(0, 3, bid_proportion=0)
    with pytest.raises(ValueError, match="offset"):
        bids(-1, 3)
    with pytest.raises(ValueError, match="num_rows"):
        persons(0, -2)


def test_bids_run_as_a_sabot_generator_source_at_parallelism_2():
    params = {"seed": 5, "event_rate": 1000}
    stream = Stream.from_generator(bids, total_rows=9_000, batch_size=1_000, parameters=params)
    out = run_stream(stream, default_parallelism=2)
    expected = generate_tables(event_numbers(2, [8_999])[0] + 1, **params)["bid"]
    assert expected.num_rows == 9_000
    key = [("dateTime", "ascending"), ("auction", "ascending"), ("bidder", "ascending"), ("price", "ascending")]
    assert out.sort_by(key).equals(expected.sort_by(key))


def test_the_combined_stream_runs_as_a_sabot_source_at_parallelism_2():
    params = {"event_rate": 1000, "seed": 2}
    stream = Stream.from_generator(events, total_rows=6_000, batch_size=700, parameters=params)
    out = run_stream(stream, default_parallelism=2).flatten()
    expected = pa.Table.from_batches([events(0, 6_000, **params)]).flatten()
    key = [(c, "ascending") for c in ("dateTime", "event_type", "person.id", "auction.id", "bid.auction",
                                      "bid.bidder", "bid.price", "bid.extra")]
    assert out.sort_by(key).equals(expected.sort_by(key))
