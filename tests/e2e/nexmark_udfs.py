"""A slowed-down Nexmark event generator for the kill -9 tests (imported by reference)."""

import time

from sabot.nexmark.queries import sequenced_events

#: seconds each generated batch takes, so a test job runs long enough to be killed mid-way
SLEEP_S = 0.05


def slow_events(offset, num_rows, **config):
    time.sleep(SLEEP_S)
    return sequenced_events(offset, num_rows, **config)


def slow_bids(offset, num_rows, **params):
    """sabot.nexmark:bids, slowed the same way (a datagen table's generator)."""
    from sabot.nexmark import bids

    time.sleep(SLEEP_S)
    return bids(offset, num_rows, **params)
