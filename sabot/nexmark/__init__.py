"""Nexmark on Sabot: the event generator and the published Flink SQL texts.

* :mod:`sabot.nexmark.generator`: vectorised, replayable person / auction / bid
  generators with Sabot's generator contract (``fn(offset, num_rows, **config)``),
  for ``Stream.from_generator``.
* ``sabot/nexmark/sql/``: the Nexmark project's ``q0.sql`` ... ``q22.sql``,
  ``ddl_gen.sql`` and ``ddl_views.sql`` (Apache License 2.0), read with
  :func:`published_sql`.

Example:
    >>> from sabot.nexmark import bids, generate_tables
    >>> bids(0, 3).column("auction").to_pylist()  # doctest: +SKIP
    >>> tables = generate_tables(10_000)  # {"person": ..., "auction": ..., "bid": ...}
"""

import os

from sabot.nexmark.generator import (  # noqa: F401
    AUCTION,
    AUCTION_SCHEMA,
    BID,
    BID_SCHEMA,
    EVENT_SCHEMA,
    FIRST_AUCTION_ID,
    FIRST_CATEGORY_ID,
    FIRST_PERSON_ID,
    PERSON,
    PERSON_SCHEMA,
    NexmarkConfig,
    auctions,
    bids,
    event_numbers,
    events,
    generate_tables,
    kind_counts,
    persons,
)

#: the published queries, in benchmark order
QUERIES = tuple(f"q{i}" for i in range(23))

SQL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sql")
_MARK = "-- ==== published text below, unchanged ====\n"


def published_sql(name):
    """The published text of ``name`` (``"q0"`` ... ``"q22"``, ``"ddl_gen"``, ``"ddl_views"``).

    The attribution header Sabot adds above the published text is left out.
    """
    if name not in QUERIES and name not in ("ddl_gen", "ddl_views"):
        raise ValueError(f"unknown Nexmark SQL file {name!r}; expected one of q0..q22, ddl_gen, ddl_views")
    with open(os.path.join(SQL_DIR, name + ".sql"), encoding="utf-8") as f:
        text = f.read()
    head, sep, body = text.partition(_MARK)
    if not sep:
        raise ValueError(f"{name}.sql lacks the line {_MARK.strip()!r} that ends its attribution header")
    return body
