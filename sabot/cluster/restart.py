"""Restart strategies: how often, and after what delay, a failed job is restarted.

A job's strategy comes from ``JobGraph.config["restart_strategy"]`` (or the
coordinator's default), one of::

    {"type": "fixed-delay", "attempts": 3, "delay_ms": 100}
    {"type": "exponential-backoff", "attempts": 3, "initial_delay_ms": 100,
     "max_delay_ms": 10000, "multiplier": 2.0}
    {"type": "none"}                    # the first failure fails the job

``attempts`` counts restarts (the seed's default: 3); the failure after the last
allowed restart fails the job with its cause.

Example:
    >>> strategy = restart_strategy_from_config({"type": "fixed-delay", "attempts": 2, "delay_ms": 50})
    >>> strategy.next_delay(1), strategy.next_delay(2), strategy.next_delay(3)
    (0.05, 0.05, None)
"""

import abc
import logging
import math

from sabot.errors import SabotError

log = logging.getLogger(__name__)

__all__ = ["RestartStrategy", "FixedDelayRestart", "ExponentialBackoffRestart", "NoRestart",
           "InvalidRestartStrategy", "restart_strategy_from_config", "DEFAULT_RESTART_STRATEGY"]

#: The strategy of a job that names none: 3 restarts, 100 ms apart.
DEFAULT_RESTART_STRATEGY = {"type": "fixed-delay", "attempts": 3, "delay_ms": 100}


class InvalidRestartStrategy(SabotError, ValueError):
    """A ``restart_strategy`` configuration is malformed (the message names the field)."""


def _number(config, name, default, minimum, what, integer=False):
    value = config.get(name, default)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value < minimum:
        kind = "an integer" if integer else "a number"
        raise InvalidRestartStrategy(f"{what}: {name!r} must be {kind} >= {minimum}, got {value!r}")
    return value


class RestartStrategy(abc.ABC):
    """Decides whether the ``n``-th failure (1-based) is restarted and after how long."""

    type = None
    attempts = 0

    @abc.abstractmethod
    def next_delay(self, failure_number):
        """Seconds to wait before restarting after failure ``failure_number`` (1 = first),
        or None when the strategy gives up."""

    @abc.abstractmethod
    def to_dict(self):
        """The strategy as JSON (as a job config gives it)."""


class NoRestart(RestartStrategy):
    """Never restart: the first failure fails the job."""

    type = "none"

    def next_delay(self, failure_number):
        return None

    def to_dict(self):
        return {"type": self.type, "attempts": 0}


class FixedDelayRestart(RestartStrategy):
    """Restart up to ``attempts`` times, ``delay_ms`` after each failure."""

    type = "fixed-delay"

    def __init__(self, attempts=3, delay_ms=100):
        self.attempts = attempts
        self.delay_ms = delay_ms

    def next_delay(self, failure_number):
        if failure_number > self.attempts:
            return None
        return self.delay_ms / 1000.0

    def to_dict(self):
        return {"type": self.type, "attempts": self.attempts, "delay_ms": self.delay_ms}


class ExponentialBackoffRestart(RestartStrategy):
    """Restart up to ``attempts`` times; the delay starts at ``initial_delay_ms`` and
    grows by ``multiplier`` per failure, capped at ``max_delay_ms``."""

    type = "exponential-backoff"

    def __init__(self, attempts=3, initial_delay_ms=100, max_delay_ms=10_000, multiplier=2.0):
        self.attempts = attempts
        self.initial_delay_ms = initial_delay_ms
        self.max_delay_ms = max_delay_ms
        self.multiplier = multiplier

    def next_delay(self, failure_number):
        if failure_number > self.attempts:
            return None
        delay = self.initial_delay_ms * self.multiplier ** (failure_number - 1)
        return min(delay, self.max_delay_ms) / 1000.0

    def to_dict(self):
        return {"type": self.type, "attempts": self.attempts, "initial_delay_ms": self.initial_delay_ms,
                "max_delay_ms": self.max_delay_ms, "multiplier": self.multiplier}


_KNOWN = {
    "fixed-delay": {"type", "attempts", "delay_ms"},
    "exponential-backoff": {"type", "attempts", "initial_delay_ms", "max_delay_ms", "multiplier"},
    "none": {"type", "attempts"},
}


def restart_strategy_from_config(config):
    """Build a :class:`RestartStrategy` from its JSON form (None: the default).

    Raises:
        InvalidRestartStrategy: unknown type or field, or a value out of range.
    """
    if config is None:
        config = DEFAULT_RESTART_STRATEGY
    if isinstance(config, RestartStrategy):
        return config
    if not isinstance(config, dict):
        raise InvalidRestartStrategy(
            f"restart_strategy must be a dict like {DEFAULT_RESTART_STRATEGY}, got {type(config).__name__}")
    kind = config.get("type", "fixed-delay")
    if kind not in _KNOWN:
        raise InvalidRestartStrategy(f"restart_strategy: unknown type {kind!r}; expected one of {sorted(_KNOWN)}")
    unknown = sorted(set(config) - _KNOWN[kind])
    if unknown:
        raise InvalidRestartStrategy(
            f"restart_strategy {kind!r}: unknown field(s) {unknown}; known: {sorted(_KNOWN[kind])}")
    what = f"restart_strategy {kind!r}"
    if kind == "none":
        return NoRestart()
    attempts = _number(config, "attempts", 3, 0, what, integer=True)
    if kind == "fixed-delay":
        return FixedDelayRestart(attempts, _number(config, "delay_ms", 100, 0, what))
    initial = _number(config, "initial_delay_ms", 100, 0, what)
    maximum = _number(config, "max_delay_ms", 10_000, 0, what)
    multiplier = _number(config, "multiplier", 2.0, 1, what)
    if maximum < initial:
        raise InvalidRestartStrategy(f"{what}: max_delay_ms ({maximum}) must be >= initial_delay_ms ({initial})")
    return ExponentialBackoffRestart(attempts, initial, maximum, multiplier)
