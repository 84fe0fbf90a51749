"""Vectorised Nexmark event generator (persons, auctions, bids) for Sabot's generator sources.

The rules are those of the reference generator that Apache Beam's Nexmark suite defines
and the Flink Nexmark benchmark reuses (github.com/nexmark/nexmark, module
``nexmark-flink``, package ``com.github.nexmark.flink.generator``):

* ``GeneratorConfig`` / ``NexmarkConfiguration``: event kinds by event number,
  ``rem = n % 50``: ``rem < 1`` is a person, ``rem < 4`` an auction, the rest bids
  (proportions 1 : 3 : 46, configurable); the timestamp of event ``n`` is
  ``baseTime + (long)(n * interEventDelayUs) / 1000`` with
  ``interEventDelayUs = 1e6 / firstEventRate``; default sizes 200 / 500 / 100 bytes,
  ``hotAuctionRatio = 2``, ``hotSellersRatio = 4``, ``hotBiddersRatio = 4``,
  ``numActivePeople = 1000``, ``numInFlightAuctions = 100``.
* ``PersonGenerator``: id ``lastBase0PersonId(n) + 1000``; name from 11 first names and
  9 last names; email ``nextString(7) + "@" + nextString(5) + ".com"``; credit card four
  ``%04d`` groups; city from 10, state from 6; a random person is drawn from the last
  ``numActivePeople`` persons plus ``PERSON_ID_LEAD = 10`` ids ahead.
* ``AuctionGenerator``: id ``lastBase0AuctionId(n) + 1000``; seller hot with probability
  ``1 - 1/hotSellersRatio``: the first person of the current batch of 100, otherwise a
  random person; category ``10 + nextInt(5)``; initial bid ``nextPrice()``, reserve
  ``initialBid + nextPrice()``; expires ``dateTime + 1 + nextLong(2 * horizon)`` where
  the horizon is the time until ``numInFlightAuctions * 50 / 3`` events later; item name
  ``nextString(20)``, description ``nextString(100)``.
* ``BidGenerator``: auction hot with probability ``1 - 1/hotAuctionRatio``: the first
  auction of the current batch of 100, otherwise one of the last ``numInFlightAuctions``
  auctions plus ``AUCTION_ID_LEAD = 10`` ahead; bidder hot with probability
  ``1 - 1/hotBiddersRatio``: the second person of the current batch of 100, otherwise a
  random person; ``FIRST_PERSON_ID`` is added once (the Flink copy adds it twice, a bug
  reported as nexmark/nexmark issue 30); channel: with probability 1/2 one of the hot
  channels Google, Facebook, Baidu, Apple (each with its own fixed URL), otherwise
  ``"channel-" + c`` for ``c`` uniform in ``[0, 10000)`` with a fixed URL per channel,
  nine in ten of them ending in ``"&channel_id=" + abs(Integer.reverse(c))``; URLs are
  ``https://www.nexmark.com/<d1>/<d2>/<d3>/item.htm?query=1`` with ``d = nextString(5, '_')``.
* ``PriceGenerator``: ``round(10 ** (u * 6) * 100)``, u uniform in [0, 1).
* ``StringsGenerator``: ``nextString(max)`` has ``3 + nextInt(max - 3)`` characters, each
  the special character (space) with probability 1/13 and otherwise a letter, then
  trimmed; ``nextExtra(currentSize, avg)`` pads an event to ``avg`` bytes on average:
  ``desired = avg - currentSize``, ``delta = round(desired * 0.2)``, length
  ``desired - delta + nextInt(2 * delta)``; ``currentSize`` counts 8 bytes per number or
  timestamp and the characters of the strings the reference counts (a bid counts 32, so
  its channel and url come on top of the 100 bytes).

What differs, on purpose:

* Every value of event ``n`` is a counter-based hash (SplitMix64 finaliser) of
  ``(seed, n, field)``, never a stateful RNG, so any slice of the sequence can be
  generated on its own: ``bids(0, 1000) == concat(bids(0, 400), bids(400, 600))``, and
  the channel/URL table and the padding text are functions of the seed. The draws
  have the reference's distributions, not its Java ``Random`` values.
* One logical timeline (Flink's ``numEventGenerators = 1``); event numbers start at 0,
  so event 0 is person 1000 (Beam's standard config; the Flink table factory starts at
  event id 1). Sabot splits the sequence across subtasks by offset instead.
* Characters: letters are uniform on a-z (the reference's ``nextExactString`` can emit a
  few non-letters from negative ints); the 1/13 special-character share is 5041/65536.
* Random text is cut from per-seed character pools at hashed starts: ``nextString``
  values from a 1 MiB pool of i.i.d. letters and specials (then trimmed), padding
  (``extra``) from a 4 MiB pool of letters. Lengths follow the reference rules exactly
  and each row's characters have the reference's distribution, but two rows may share
  text, and padding repeats with a period of 4 MiB (a long-window compressor would
  notice).

Configuration (keyword parameters of every generator function; defaults follow the
reference): ``seed``, ``first_event_time_ms`` (baseTime), ``event_rate`` (events per
second of event time), ``person_proportion``, ``auction_proportion``,
``bid_proportion``, ``avg_person_bytes``, ``avg_auction_bytes``, ``avg_bid_bytes``,
``hot_auction_ratio``, ``hot_sellers_ratio``, ``hot_bidders_ratio``,
``num_active_people``, ``num_in_flight_auctions`` and ``id_lead``. ``id_lead`` is the
reference's PERSON_ID_LEAD / AUCTION_ID_LEAD (10): a cold seller, bidder or auction may
be one of the next ``id_lead`` ids, not generated yet, as in the reference ("newPerson
and newAuction events appear to have been swapped in time"). ``id_lead=0`` draws only
ids that exist at that event (the hot bidder, batch start + 1 in the reference, is then
capped at the last person), so every reference joins to an earlier event.

Example:
    >>> from sabot import Stream
    >>> from sabot.nexmark import bids
    >>> stream = Stream.from_generator(bids, total_rows=1_000_000,
    ...                                parameters={"event_rate": 10_000_000})  # doctest: +SKIP
"""

import functools
import logging
import math
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

__all__ = [
    "NexmarkConfig", "persons", "auctions", "bids", "events", "generate_tables", "kind_counts",
    "event_numbers", "PERSON_SCHEMA", "AUCTION_SCHEMA", "BID_SCHEMA", "EVENT_SCHEMA",
    "PERSON", "AUCTION", "BID", "FIRST_PERSON_ID", "FIRST_AUCTION_ID", "FIRST_CATEGORY_ID",
]

# -- reference constants ------------------------------------------------------------------

FIRST_PERSON_ID = 1000
FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
NUM_CATEGORIES = 5
#: hot sellers / bidders / auctions are picked from the current batch of this many ids
HOT_BATCH = 100
MIN_STRING_LENGTH = 3
HOT_CHANNELS = ("Google", "Facebook", "Baidu", "Apple")
HOT_CHANNELS_RATIO = 2
CHANNELS_NUMBER = 10_000
US_STATES = ("AZ", "CA", "ID", "OR", "WA", "WY")
US_CITIES = ("Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond",
             "Seattle", "Kent", "Cheyenne")
FIRST_NAMES = ("Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter",
               "Walter")
LAST_NAMES = ("Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris")
URL_PREFIX = "https://www.nexmark.com/"
URL_SUFFIX = "/item.htm?query=1"

#: event_type values of the combined stream (Flink DDL: 0 person, 1 auction, 2 bid)
PERSON, AUCTION, BID = 0, 1, 2

#: 2024-01-01T00:00:00Z: a fixed first event time keeps every run identical
DEFAULT_FIRST_EVENT_TIME_MS = 1_704_067_200_000

# -- schemas (the Flink DDL, ddl_gen.sql: BIGINT -> int64, VARCHAR -> string,
#    TIMESTAMP(3) -> timestamp[ms], event_type int -> int32) -------------------------------

_TS = pa.timestamp("ms")
PERSON_SCHEMA = pa.schema([
    ("id", pa.int64()), ("name", pa.string()), ("emailAddress", pa.string()),
    ("creditCard", pa.string()), ("city", pa.string()), ("state", pa.string()),
    ("dateTime", _TS), ("extra", pa.string()),
])
AUCTION_SCHEMA = pa.schema([
    ("id", pa.int64()), ("itemName", pa.string()), ("description", pa.string()),
    ("initialBid", pa.int64()), ("reserve", pa.int64()), ("dateTime", _TS), ("expires", _TS),
    ("seller", pa.int64()), ("category", pa.int64()), ("extra", pa.string()),
])
BID_SCHEMA = pa.schema([
    ("auction", pa.int64()), ("bidder", pa.int64()), ("price", pa.int64()),
    ("channel", pa.string()), ("url", pa.string()), ("dateTime", _TS), ("extra", pa.string()),
])
EVENT_SCHEMA = pa.schema([
    ("event_type", pa.int32()),
    ("person", pa.struct(list(PERSON_SCHEMA))),
    ("auction", pa.struct(list(AUCTION_SCHEMA))),
    ("bid", pa.struct(list(BID_SCHEMA))),
    ("dateTime", _TS),
])


# -- configuration ------------------------------------------------------------------------

@dataclass(frozen=True)
class NexmarkConfig:
    """Generator parameters; the defaults are the reference's ``NexmarkConfiguration``."""

    seed: int = 0
    first_event_time_ms: int = DEFAULT_FIRST_EVENT_TIME_MS
    event_rate: float = 10_000
    person_proportion: int = 1
    auction_proportion: int = 3
    bid_proportion: int = 46
    avg_person_bytes: int = 200
    avg_auction_bytes: int = 500
    avg_bid_bytes: int = 100
    hot_auction_ratio: int = 2
    hot_sellers_ratio: int = 4
    hot_bidders_ratio: int = 4
    num_active_people: int = 1000
    num_in_flight_auctions: int = 100
    id_lead: int = 10

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "event_rate":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                    and value > 0
                if not ok:
                    raise ValueError(f"nexmark: event_rate must be a number > 0 (events per second), got {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"nexmark: {f.name} must be an integer, got {value!r}")
        positive = ("person_proportion", "auction_proportion", "bid_proportion", "hot_auction_ratio",
                    "hot_sellers_ratio", "hot_bidders_ratio", "num_active_people", "num_in_flight_auctions")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"nexmark: {name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("avg_person_bytes", "avg_auction_bytes", "avg_bid_bytes", "id_lead"):
            if getattr(self, name) < 0:
                raise ValueError(f"nexmark: {name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("avg_person_bytes", "avg_auction_bytes", "avg_bid_bytes"):
            if getattr(self, name) > _POOL_SIZE // 2:
                raise ValueError(f"nexmark: {name} must be <= {_POOL_SIZE // 2}, got {getattr(self, name)!r}")
        if self.first_event_time_ms < 0:
            raise ValueError(f"nexmark: first_event_time_ms must be >= 0, got {self.first_event_time_ms!r}")

    @property
    def total_proportion(self):
        return self.person_proportion + self.auction_proportion + self.bid_proportion

    @property
    def inter_event_delay_us(self):
        """Microseconds of event time between consecutive events (GeneratorConfig)."""
        return 1_000_000.0 / self.event_rate

    @classmethod
    def of(cls, config):
        """A config from generator keyword parameters, naming any unknown one."""
        if isinstance(config, cls):
            return config
        return _config(tuple(sorted(config.items())))


@functools.lru_cache(maxsize=64)
def _config(items):
    names = {f.name for f in fields(NexmarkConfig)}
    unknown = [k for k, _ in items if k not in names]
    if unknown:
        raise ValueError(f"nexmark: unknown parameter(s) {unknown}; the parameters are {sorted(names)}")
    return NexmarkConfig(**dict(items))


# -- counter-based hashing ----------------------------------------------------------------

_M64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_LOW32 = np.uint64(0xFFFFFFFF)
_S30, _S27, _S31, _S32, _S11 = (np.uint64(s) for s in (30, 27, 31, 32, 11))

# One id per random draw of the reference. A field that needs several words per event
# uses the streams field, field + 1, ..., so ids are spaced 64 apart.
(_F_P_NAME, _F_P_CC, _F_P_PLACE, _F_P_EXTRA, _F_A_SELLER, _F_A_CATEGORY, _F_A_INITIAL, _F_A_RESERVE,
 _F_A_EXPIRES, _F_A_EXTRA, _F_B_AUCTION, _F_B_BIDDER, _F_B_PRICE, _F_B_CHANNEL, _F_B_EXTRA,
 _F_URL_ID, _F_P_EMAIL1, _F_P_EMAIL2, _F_A_NAME, _F_A_DESC, _F_URL_DIR, _F_POOL) = (64 * k for k in range(22))


def _splitmix_int(x):
    x &= _M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


@functools.lru_cache(maxsize=4096)
def _salts(seed, field, width):
    """Per-(seed, field + j) additive keys, so fields and seeds give independent streams."""
    base = _splitmix_int(int(seed) * 0x100000001B3 + 0x5AB07)
    return np.array([_splitmix_int(base ^ ((field + j + 1) * 0xD6E8FEB86659FD93)) for j in range(width)],
                    dtype=np.uint64)


def _mix(x):
    """SplitMix64 finaliser, in place on a uint64 array (wrapping arithmetic)."""
    x ^= x >> _S30
    x *= _MIX1
    x ^= x >> _S27
    x *= _MIX2
    x ^= x >> _S31
    return x


def _hash(seed, field, n):
    """uint64 word of (seed, field, n) for every event number in ``n`` (uint64)."""
    x = n * _GOLDEN
    x += _salts(seed, field, 1)[0]
    return _mix(x)


def _hash_matrix(seed, field, n, width):
    """``(len(n), width)`` words: column j is the stream ``field + j``."""
    x = (n * _GOLDEN)[:, None] + _salts(seed, field, width)[None, :]
    return _mix(x)


def _hi(h):
    return h >> _S32


def _lo(h):
    return h & _LOW32


def _below(h32, bound):
    """Integers in ``[0, bound)`` from 32-bit words (multiply-high); ``bound`` scalar or array < 2**32."""
    # a fresh array whose values are < 2**32: reinterpreting it as int64 needs no copy
    return ((h32 * np.asarray(bound, dtype=np.uint64)) >> _S32).view(np.int64)


def _below_long(h, bound):
    """``LongGenerator.nextLong``: ``[0, bound)`` for any positive int64 bound (array)."""
    bound = np.asarray(bound, dtype=np.int64)
    small = bound < (1 << 32)
    if small.all():
        return _below(_hi(h), bound)
    return np.where(small, _below(_hi(h), np.minimum(bound, (1 << 32) - 1)),
                    (h % np.maximum(bound, 1).astype(np.uint64)).astype(np.int64))


def _unit(h):
    """Doubles uniform in [0, 1) (top 53 bits)."""
    return (h >> _S11).astype(np.float64) * (1.0 / (1 << 53))


# -- event arithmetic ---------------------------------------------------------------------

def event_numbers(kind, index, config=None):
    """Global event numbers of the ``index``-th events of one kind (0-based arrays).

    The ``k``-th bid is event ``(k // 46) * 50 + 4 + k % 46`` with the default proportions.
    """
    cfg = NexmarkConfig.of(config or {})
    k = np.asarray(index, dtype=np.int64)
    t, p, a, b = cfg.total_proportion, cfg.person_proportion, cfg.auction_proportion, cfg.bid_proportion
    if kind == PERSON:
        return (k // p) * t + k % p
    if kind == AUCTION:
        return (k // a) * t + p + k % a
    if kind == BID:
        return (k // b) * t + p + a + k % b
    raise ValueError(f"nexmark: kind must be PERSON (0), AUCTION (1) or BID (2), got {kind!r}")


def kind_counts(num_events, config=None):
    """``(persons, auctions, bids)`` among the first ``num_events`` events."""
    cfg = NexmarkConfig.of(config or {})
    t, p, a = cfg.total_proportion, cfg.person_proportion, cfg.auction_proportion
    epochs, rem = divmod(int(num_events), t)
    persons = epochs * p + min(rem, p)
    auctions = epochs * a + min(max(rem - p, 0), a)
    return persons, auctions, int(num_events) - persons - auctions


def _timestamps(n, cfg):
    """``GeneratorConfig.timestampForEvent``: baseTime + (long)(n * interEventDelayUs) / 1000."""
    return cfg.first_event_time_ms + np.floor(n.astype(np.float64) * cfg.inter_event_delay_us).astype(np.int64) // 1000


def _random_person(h32, last_person, cfg):
    """``PersonGenerator.nextBase0PersonId``: one of the active persons, or up to id_lead ahead."""
    num_people = last_person + 1
    if len(num_people) and num_people.min() >= cfg.num_active_people:  # the steady state: a scalar bound
        return num_people - cfg.num_active_people + _below(h32, cfg.num_active_people + cfg.id_lead)
    active = np.minimum(num_people, cfg.num_active_people)
    return num_people - active + _below(h32, active + cfg.id_lead)


_SIX_LN10 = 6.0 * math.log(10.0)  # 10 ** (6u) = exp(6u ln 10), cheaper than power


def _price(h):
    """``PriceGenerator.nextPrice``: Math.round(10 ** (u * 6) * 100)."""
    return np.floor(np.exp(_unit(h) * _SIX_LN10) * 100.0 + 0.5).astype(np.int64)


# -- strings: slices of per-seed character pools -------------------------------------------
#
# A random string of the reference (nextString: i.i.d. characters, then trim; nextExtra:
# i.i.d. letters) is generated as a slice of a per-seed pool of such characters at a
# hashed start: same per-row distribution, O(rows) work whatever the length. The
# slices become an Arrow string_view array pointing into the pool, and one C++ cast
# copies them into a plain string array.

_SPECIAL_BELOW = 5041  # of 65536: the reference's 1/13 chance of the special character
_SPACE, _UNDERSCORE = 32, 95
_EXTRA_POOL_SIZE = 1 << 22  # letters only (nextExtra); the padding repeats after 4 MiB
_TEXT_POOL_SIZE = 1 << 20  # letters and a special character (nextString)
_POOL_SIZE = _EXTRA_POOL_SIZE
_USE_STRING_VIEW = hasattr(pa, "string_view")


class _Pool:
    """A read-only character pool and what slicing it needs (run lengths for trim())."""

    def __init__(self, chars):
        self.size = len(chars)
        padded = np.zeros(self.size + 16, dtype=np.uint8)
        padded[:self.size] = chars
        padded.setflags(write=False)
        self.chars = padded
        self.words = np.frombuffer(padded.data, dtype="<u4")  # 4-byte words for view prefixes
        self.buffer = pa.py_buffer(padded)
        is_space = chars == _SPACE
        if is_space.any():
            # lead[i]: spaces starting at i; trail[i]: spaces ending at i (runs are short:
            # P(run >= 255) = 13**-255)
            self.lead = _run_lengths(is_space[::-1])[::-1].copy()
            self.trail = _run_lengths(is_space)
        else:
            self.lead = self.trail = None

    def slices(self, starts, lengths, aligned=False):
        """A pa.string() array of ``chars[starts[i] : starts[i] + lengths[i]]``.

        ``aligned``: every start is a multiple of 4 (a faster prefix read).
        """
        starts = np.asarray(starts, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        if not _USE_STRING_VIEW:
            total = int(lengths.sum())
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            index = np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1] - starts, lengths)
            return _string_array(self.chars[index], lengths)
        views = _short_views(self.words, starts, lengths, aligned)
        return pa.Array.from_buffers(pa.string_view(), len(starts), [None, pa.py_buffer(views), self.buffer]
                                     ).cast(pa.string())

    def trim(self, starts, lengths):
        """Java ``trim()`` of the slices: ``(starts, lengths)`` without leading/trailing spaces."""
        if self.lead is None:
            return starts, lengths
        lead = np.minimum(self.lead[starts].astype(np.int64), lengths)
        empty = lead >= lengths
        last = np.maximum(starts + lengths - 1, 0)
        trail = np.where(empty, 0, self.trail[last].astype(np.int64))
        return starts + lead, np.where(empty, 0, lengths - lead - trail)


def _run_lengths(flags):
    """For each i, the number of consecutive True values ending at i (uint8, saturating)."""
    idx = np.arange(len(flags))
    last_false = np.maximum.accumulate(np.where(~flags, idx, -1))
    return np.minimum(idx - last_false, 255).astype(np.uint8)


def _read_words(words, starts, count):
    """``count`` little-endian uint32 words of pool bytes from ``starts`` (any alignment)."""
    q = starts >> 2
    if not (starts & 3).any():
        return np.stack([words[q + k] for k in range(count)], axis=1).astype(np.uint64)
    out = np.empty((len(starts), count), dtype=np.uint64)
    shift = ((starts & 3) * 8).astype(np.uint64)
    for k in range(count):
        lo = words[q + k].astype(np.uint64)
        hi = words[q + k + 1].astype(np.uint64)
        out[:, k] = ((lo | (hi << _S32)) >> shift) & _LOW32
    return out


def _short_views(words, starts, lengths, aligned=False):
    """Arrow string_view structs (16 bytes each) for pool slices.

    A slice of up to 12 bytes is inlined (length + the bytes, zero padded); a longer one
    is (length, its first 4 bytes, buffer 0, offset).
    """
    rows = len(starts)
    views = np.zeros((rows, 4), dtype="<u4")
    views[:, 0] = lengths
    inline = lengths <= 12
    some_inline = inline.any()
    if some_inline:
        idx = np.flatnonzero(inline)
        data = _read_words(words, starts[idx], 3)
        # zero the bytes past the end of the string
        keep = (np.clip(lengths[idx, None] - np.array([0, 4, 8]), 0, 4) * 8).astype(np.uint64)
        views[idx, 1:] = data & ((np.uint64(1) << keep) - np.uint64(1))
    if not some_inline or not inline.all():
        idx = np.flatnonzero(~inline) if some_inline else slice(None)
        long_starts = starts[idx]
        if aligned:
            views[idx, 1] = words[long_starts >> 2]
        else:
            views[idx, 1] = _read_words(words, long_starts, 1)[:, 0]
        views[idx, 3] = long_starts
    return views


@functools.lru_cache(maxsize=16)
def _pool(seed, special):
    """The pool of ``seed``: letters only (``special=None``, for extra) or with ``special``."""
    if special is None:
        words = _hash(seed, _F_POOL, np.arange(_EXTRA_POOL_SIZE // 4, dtype=np.uint64))
        c16 = _chunks16(words)
        chars = (97 + ((c16 * 26) >> 16)).astype(np.uint8)
    else:
        words = _hash(seed, _F_POOL + 1 + special, np.arange(_TEXT_POOL_SIZE // 4, dtype=np.uint64))
        c16 = _chunks16(words)
        letters = 97 + (((c16 - _SPECIAL_BELOW) * 26) // (65536 - _SPECIAL_BELOW))
        chars = np.where(c16 < _SPECIAL_BELOW, special, letters).astype(np.uint8)
    return _Pool(chars)


def _chunks16(words):
    """uint64 words -> their 16-bit chunks, low bits first (independent of byte order)."""
    return words.astype("<u8").view("<u2").astype(np.int64)


def _next_string(seed, field, n, max_length, special=_SPACE):
    """``StringsGenerator.nextString(max_length, special)`` for events ``n``.

    ``3 + nextInt(max_length - 3)`` characters, each ``special`` with probability 1/13,
    else a letter; a space special is trimmed from both ends as Java's ``trim()`` does.
    Returns ``(array, lengths)``.
    """
    pool = _pool(seed, special)
    h = _hash(seed, field, n)
    lengths = MIN_STRING_LENGTH + _below(_hi(h), max_length - MIN_STRING_LENGTH)
    starts = _below(_lo(h), pool.size - lengths + 1)
    if special == _SPACE:
        starts, lengths = pool.trim(starts, lengths)
    return pool.slices(starts, lengths), lengths


def _string_array(data, lengths):
    """A pa.string() array from concatenated UTF-8 bytes and per-row lengths."""
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] >= 1 << 31:
        raise ValueError("nexmark: one batch holds more than 2 GiB of string data; generate smaller batches")
    buffers = [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(np.ascontiguousarray(data))]
    return pa.Array.from_buffers(pa.string(), len(lengths), buffers)


def _extra_lengths(h32, current_size, avg):
    """``StringsGenerator.nextExtra`` lengths for the given current sizes (array or scalar)."""
    current_size = np.asarray(current_size, dtype=np.int64)
    desired = avg - current_size
    delta = np.floor(desired * 0.2 + 0.5).astype(np.int64)  # Math.round
    length = desired - delta + _below(h32, np.maximum(2 * delta, 1))
    return np.where(current_size > avg, 0, length)


def _extra(seed, h, current_size, avg):
    """``nextExtra`` padding: length from the high word of ``h``, a pool slice from the low."""
    lengths = np.broadcast_to(_extra_lengths(_hi(h), current_size, avg), h.shape)
    pool = _pool(seed, None)
    # 4-byte aligned starts: a view's prefix is then one aligned word of the pool
    starts = 4 * _below(_lo(h), (pool.size - lengths) // 4 + 1)
    return pool.slices(starts, lengths, aligned=True)


class _Table:
    """A fixed string table whose rows are picked per event (Arrow take, or views + cast)."""

    def __init__(self, array):
        self.array = array
        if _USE_STRING_VIEW:
            view = array.cast(pa.string_view())
            buffers = view.buffers()
            views = np.frombuffer(buffers[1], dtype="<u4").reshape(-1, 4)[view.offset:view.offset + len(view)]
            # one 16-byte item per view: a 1-D gather is several times faster than a 2-D one
            self.views = np.ascontiguousarray(views).view(np.dtype((np.void, 16))).ravel()
            self.data = buffers[2:]

    def take(self, index):
        if not _USE_STRING_VIEW:
            return self.array.take(pa.array(index))
        views = np.take(self.views, index)
        return pa.Array.from_buffers(pa.string_view(), len(index), [None, pa.py_buffer(views), *self.data]
                                     ).cast(pa.string())


# -- channels and URLs --------------------------------------------------------------------

def _reverse32(x):
    """Java ``Integer.reverse`` on uint32 values."""
    x = x.astype(np.uint32)
    x = ((x >> np.uint32(1)) & np.uint32(0x55555555)) | ((x & np.uint32(0x55555555)) << np.uint32(1))
    x = ((x >> np.uint32(2)) & np.uint32(0x33333333)) | ((x & np.uint32(0x33333333)) << np.uint32(2))
    x = ((x >> np.uint32(4)) & np.uint32(0x0F0F0F0F)) | ((x & np.uint32(0x0F0F0F0F)) << np.uint32(4))
    x = ((x >> np.uint32(8)) & np.uint32(0x00FF00FF)) | ((x & np.uint32(0x00FF00FF)) << np.uint32(8))
    return ((x >> np.uint32(16)) | (x << np.uint32(16))).view(np.int32)


def java_channel_id(channel_number):
    """``Math.abs(Integer.reverse(c))`` with Java's int overflow (c = 1 gives -2147483648)."""
    rev = _reverse32(np.asarray(channel_number, dtype=np.int64)).astype(np.int64)
    return np.where(rev == -(1 << 31), rev, np.abs(rev))


@functools.lru_cache(maxsize=8)
def _channel_table(seed):
    """Channel names and URLs: entries 0..9999 are ``channel-<c>``, 10000.. the hot channels.

    A function of the seed only (the reference draws the URLs once per JVM).
    """
    total = CHANNELS_NUMBER + len(HOT_CHANNELS)
    idx = np.arange(total, dtype=np.uint64)
    dirs = [_next_string(seed, _F_URL_DIR + d, idx, 5, special=_UNDERSCORE)[0] for d in range(3)]
    cold = np.arange(CHANNELS_NUMBER)
    has_id = _below(_hi(_hash(seed, _F_URL_ID, idx[:CHANNELS_NUMBER])), 10) > 0
    ids = pc.cast(pa.array(java_channel_id(cold)), pa.string())
    suffix = pc.if_else(pa.array(has_id), pc.binary_join_element_wise("&channel_id=", ids, ""), "")
    suffix = pa.concat_arrays([suffix, pa.array([""] * len(HOT_CHANNELS), pa.string())])
    urls = pc.binary_join_element_wise(URL_PREFIX, dirs[0], "/", dirs[1], "/", dirs[2], URL_SUFFIX, suffix, "")
    names = pa.concat_arrays([
        pc.binary_join_element_wise("channel-", pc.cast(pa.array(cold), pa.string()), ""),
        pa.array(HOT_CHANNELS, pa.string()),
    ])
    return _Table(names), _Table(urls)


# -- the three kinds ----------------------------------------------------------------------

def _person_columns(n, cfg):
    """Persons at event numbers ``n`` (int64, all person events)."""
    seed, rows = cfg.seed, len(n)
    un = n.view(np.uint64)
    # lastBase0PersonId of a person event is the person itself: p per epoch before it
    ident = (n // cfg.total_proportion) * cfg.person_proportion + n % cfg.total_proportion + FIRST_PERSON_ID
    h = _hash(seed, _F_P_NAME, un)
    name_index = _below(_hi(h), len(FIRST_NAMES)) * len(LAST_NAMES) + _below(_lo(h), len(LAST_NAMES))
    name = _name_table().take(name_index)
    name_len = _name_lengths()[name_index]
    user, user_len = _next_string(seed, _F_P_EMAIL1, un, 7)
    host, host_len = _next_string(seed, _F_P_EMAIL2, un, 5)
    email = pc.binary_join_element_wise(user, "@", host, ".com", "")
    # four "%04d" groups of nextInt(10000), space separated: 19 characters
    cc_words = _hash_matrix(seed, _F_P_CC, un, 2)
    cc = np.full((rows, 19), _SPACE, dtype=np.uint8)
    digits = _four_digits()
    for k, half in enumerate((_hi(cc_words[:, 0]), _lo(cc_words[:, 0]), _hi(cc_words[:, 1]), _lo(cc_words[:, 1]))):
        cc[:, 5 * k:5 * k + 4] = digits[_below(half, 10000)].view(np.uint8).reshape(rows, 4)
    credit_card = _string_array(cc.ravel(), np.full(rows, 19))
    h = _hash(seed, _F_P_PLACE, un)
    city_index, state_index = _below(_hi(h), len(US_CITIES)), _below(_lo(h), len(US_STATES))
    city = _place_tables()[0].take(city_index)
    state = _place_tables()[1].take(state_index)
    city_len = np.array([len(c) for c in US_CITIES])[city_index]
    current = 8 + name_len + (user_len + 1 + host_len + 4) + 19 + city_len + 2
    extra = _extra(seed, _hash(seed, _F_P_EXTRA, un), current, cfg.avg_person_bytes)
    return [pa.array(ident), name, email, credit_card, city, state,
            pa.array(_timestamps(n, cfg), _TS), extra]


@functools.lru_cache(maxsize=1)
def _place_tables():
    return _Table(pa.array(US_CITIES, pa.string())), _Table(pa.array(US_STATES, pa.string()))


@functools.lru_cache(maxsize=1)
def _four_digits():
    """``"%04d" % i`` for i < 10000 as little-endian uint32 words of 4 ASCII bytes."""
    text = "".join(f"{i:04d}" for i in range(10000)).encode()
    return np.frombuffer(text, dtype="<u4").copy()


@functools.lru_cache(maxsize=1)
def _name_table():
    return _Table(pa.array([f"{f} {last}" for f in FIRST_NAMES for last in LAST_NAMES], pa.string()))


@functools.lru_cache(maxsize=1)
def _name_lengths():
    return np.array([len(f) + 1 + len(last) for f in FIRST_NAMES for last in LAST_NAMES])


def _auction_columns(n, cfg):
    """Auctions at event numbers ``n`` (int64, all auction events)."""
    seed, un = cfg.seed, n.view(np.uint64)
    # lastBase0AuctionId of an auction event is the auction itself; the last person is the
    # last of this epoch (persons come first in an epoch)
    epoch = n // cfg.total_proportion
    ident = epoch * cfg.auction_proportion + n % cfg.total_proportion - cfg.person_proportion + FIRST_AUCTION_ID
    last_person = epoch * cfg.person_proportion + (cfg.person_proportion - 1)
    h = _hash(seed, _F_A_SELLER, un)
    hot = _below(_hi(h), cfg.hot_sellers_ratio) > 0
    seller = np.where(hot, (last_person // HOT_BATCH) * HOT_BATCH, _random_person(_lo(h), last_person, cfg))
    category = FIRST_CATEGORY_ID + _below(_hi(_hash(seed, _F_A_CATEGORY, un)), NUM_CATEGORIES)
    initial = _price(_hash(seed, _F_A_INITIAL, un))
    reserve = initial + _price(_hash(seed, _F_A_RESERVE, un))
    ts = _timestamps(n, cfg)
    # nextAuctionLengthMs: uniform in [1, 2 * horizon], horizon = time until the auction
    # numInFlightAuctions ahead is generated
    ahead = (cfg.num_in_flight_auctions * cfg.total_proportion) // cfg.auction_proportion
    horizon = _timestamps(n + ahead, cfg) - ts
    expires = ts + 1 + _below_long(_hash(seed, _F_A_EXPIRES, un), np.maximum(horizon * 2, 1))
    item, item_len = _next_string(seed, _F_A_NAME, un, 20)
    desc, desc_len = _next_string(seed, _F_A_DESC, un, 100)
    current = 8 + item_len + desc_len + 8 * 5
    extra = _extra(seed, _hash(seed, _F_A_EXTRA, un), current, cfg.avg_auction_bytes)
    return [pa.array(ident), item, desc, pa.array(initial), pa.array(reserve),
            pa.array(ts, _TS), pa.array(expires, _TS), pa.array(seller + FIRST_PERSON_ID),
            pa.array(category), extra]


def _bid_columns(n, cfg):
    """Bids at event numbers ``n`` (int64, all bid events)."""
    seed, un = cfg.seed, n.view(np.uint64)
    # every n is a bid: the last person and auction are the last of this epoch
    epoch = n // cfg.total_proportion
    last_auction = epoch * cfg.auction_proportion + (cfg.auction_proportion - 1)
    last_person = epoch * cfg.person_proportion + (cfg.person_proportion - 1)
    h = _hash(seed, _F_B_AUCTION, un)
    hot = _below(_hi(h), cfg.hot_auction_ratio) > 0
    if len(n) and last_auction.min() >= cfg.num_in_flight_auctions:  # the steady state: a scalar bound
        cold = last_auction - cfg.num_in_flight_auctions + _below(_lo(h), cfg.num_in_flight_auctions + 1 + cfg.id_lead)
    else:
        low = np.maximum(last_auction - cfg.num_in_flight_auctions, 0)
        cold = low + _below(_lo(h), last_auction - low + 1 + cfg.id_lead)
    auction = np.where(hot, (last_auction // HOT_BATCH) * HOT_BATCH, cold) + FIRST_AUCTION_ID
    h = _hash(seed, _F_B_BIDDER, un)
    hot = _below(_hi(h), cfg.hot_bidders_ratio) > 0
    hot_bidder = (last_person // HOT_BATCH) * HOT_BATCH + 1
    if cfg.id_lead == 0:
        hot_bidder = np.minimum(hot_bidder, last_person)
    bidder = np.where(hot, hot_bidder, _random_person(_lo(h), last_person, cfg)) + FIRST_PERSON_ID
    price = _price(_hash(seed, _F_B_PRICE, un))
    h = _hash(seed, _F_B_CHANNEL, un)
    hot = _below(_hi(h), HOT_CHANNELS_RATIO) > 0
    channel_index = np.where(hot, CHANNELS_NUMBER + _below(_lo(h), len(HOT_CHANNELS)),
                             _below(_lo(h), CHANNELS_NUMBER))
    names, urls = _channel_table(seed)
    extra = _extra(seed, _hash(seed, _F_B_EXTRA, un), 8 * 4, cfg.avg_bid_bytes)
    return [pa.array(auction), pa.array(bidder), pa.array(price), names.take(channel_index),
            urls.take(channel_index), pa.array(_timestamps(n, cfg), _TS), extra]


_COLUMNS = {PERSON: (_person_columns, PERSON_SCHEMA), AUCTION: (_auction_columns, AUCTION_SCHEMA),
            BID: (_bid_columns, BID_SCHEMA)}


# -- Sabot generator functions ------------------------------------------------------------

def _check(offset, num_rows):
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ValueError(f"offset must be an integer >= 0, got {offset!r}")
    if isinstance(num_rows, bool) or not isinstance(num_rows, (int, np.integer)) or num_rows < 0:
        raise ValueError(f"num_rows must be an integer >= 0, got {num_rows!r}")


def _kind_batch(kind, offset, num_rows, config):
    _check(offset, num_rows)
    cfg = NexmarkConfig.of(config)
    make, schema = _COLUMNS[kind]
    n = event_numbers(kind, np.arange(offset, offset + num_rows, dtype=np.int64), cfg)
    return pa.RecordBatch.from_arrays(make(n, cfg), schema=schema)


def persons(offset, num_rows, **config):
    """Persons ``[offset, offset + num_rows)`` (counted in persons) as a RecordBatch.

    Columns as the Flink DDL's ``person`` row: id, name, emailAddress, creditCard, city,
    state, dateTime (timestamp[ms]), extra. The k-th person is event
    ``event_numbers(PERSON, k)`` and has id ``1000 + k``.
    """
    return _kind_batch(PERSON, offset, num_rows, config)


def auctions(offset, num_rows, **config):
    """Auctions ``[offset, offset + num_rows)`` (counted in auctions); the k-th has id 1000 + k.

    Columns: id, itemName, description, initialBid, reserve, dateTime, expires, seller,
    category, extra.
    """
    return _kind_batch(AUCTION, offset, num_rows, config)


def bids(offset, num_rows, **config):
    """Bids ``[offset, offset + num_rows)`` (counted in bids) as a RecordBatch.

    Columns: auction, bidder, price, channel, url, dateTime, extra.
    """
    return _kind_batch(BID, offset, num_rows, config)


def _expand(array, before, num_rows, validity):
    """``array`` (the values of one kind's rows) spread over all ``num_rows`` rows.

    ``before[r]`` is the number of rows of that kind before row ``r`` (length
    ``num_rows + 1``): row r's value is ``array[before[r]]`` where the kind occurs, and a
    null (empty string, 0) elsewhere.
    """
    if pa.types.is_string(array.type):
        offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=len(array) + 1, offset=array.offset * 4)
        full = offsets[before]  # rows of other kinds get a zero-length slot
        data = array.buffers()[2] or pa.py_buffer(b"")
        return pa.Array.from_buffers(pa.string(), num_rows, [validity, pa.py_buffer(full), data])
    values = array.to_numpy(zero_copy_only=False)
    if values.dtype.kind == "M":  # timestamps travel as their int64 ticks
        values = values.view(np.int64)
    if len(values) == 0:
        full = np.zeros(num_rows, dtype=values.dtype)
    else:  # a null slot repeats a neighbour's value; only the validity bitmap matters there
        full = values[np.minimum(before[:-1], len(values) - 1)]
    return pa.Array.from_buffers(array.type, num_rows, [validity, pa.py_buffer(full)])


def events(offset, num_rows, **config):
    """Events ``[offset, offset + num_rows)`` of the combined stream, as Flink's DDL models it.

    Columns: ``event_type`` int32 (0 person, 1 auction, 2 bid), ``person``, ``auction``
    and ``bid`` structs (exactly one non-null per row, with the fields of
    :data:`PERSON_SCHEMA` / :data:`AUCTION_SCHEMA` / :data:`BID_SCHEMA`) and ``dateTime``
    (the event's timestamp). Row ``r`` is event number ``offset + r``.
    """
    _check(offset, num_rows)
    cfg = NexmarkConfig.of(config)
    n = np.arange(offset, offset + num_rows, dtype=np.int64)
    rem = n % cfg.total_proportion
    p, a = cfg.person_proportion, cfg.auction_proportion
    kind = np.where(rem < p, PERSON, np.where(rem < p + a, AUCTION, BID)).astype(np.int32)
    structs = []
    for k in (PERSON, AUCTION, BID):
        make, schema = _COLUMNS[k]
        mask = kind == k
        before = np.zeros(num_rows + 1, dtype=np.int64)
        np.cumsum(mask, out=before[1:])
        validity = pa.py_buffer(np.packbits(mask, bitorder="little"))
        columns = make(n[mask], cfg)
        children = [_expand(col, before, num_rows, validity) for col in columns]
        structs.append(pa.StructArray.from_arrays(children, fields=list(schema), mask=pa.array(~mask)))
    return pa.RecordBatch.from_arrays([pa.array(kind), *structs, pa.array(_timestamps(n, cfg), _TS)],
                                      schema=EVENT_SCHEMA)


def generate_tables(num_events, batch_size=1 << 20, **config):
    """The person, auction and bid tables of the first ``num_events`` events.

    Returns ``{"person": pa.Table, "auction": pa.Table, "bid": pa.Table}`` (rows in event
    order); what a bounded Nexmark run over ``num_events`` events reads.
    """
    if isinstance(num_events, bool) or not isinstance(num_events, (int, np.integer)) or num_events < 0:
        raise ValueError(f"num_events must be an integer >= 0, got {num_events!r}")
    counts = kind_counts(num_events, config)
    out = {}
    for name, fn, schema, count in (("person", persons, PERSON_SCHEMA, counts[0]),
                                    ("auction", auctions, AUCTION_SCHEMA, counts[1]),
                                    ("bid", bids, BID_SCHEMA, counts[2])):
        batches = [fn(start, min(batch_size, count - start), **config) for start in range(0, count, batch_size)]
        out[name] = pa.Table.from_batches(batches, schema=schema)
    return out
