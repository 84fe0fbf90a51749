"""Control events that travel through channels in order with the data.

Events are small frozen dataclasses. They need no flow-control credit (they are
tiny and must never be stuck behind a full buffer of data *on the sender*), but a
channel keeps their order relative to the record batches around them: a barrier
sent after batch ``n`` is received after batch ``n``.

On the wire an event is ``to_dict()`` as JSON; :func:`from_dict` turns it back::

    >>> from_dict(CheckpointBarrier(7, 1700000000000).to_dict())
    CheckpointBarrier(checkpoint_id=7, timestamp_ms=1700000000000)
"""

from dataclasses import dataclass, field
from typing import Union

__all__ = [
    "CheckpointBarrier",
    "EndOfStream",
    "Event",
    "RescaleBarrier",
    "Watermark",
    "WatermarkStatus",
    "from_dict",
    "is_event",
]


@dataclass(frozen=True)
class EndOfStream:
    """No more data will come on this channel."""

    def to_dict(self) -> dict:
        return {"type": "EndOfStream"}


@dataclass(frozen=True)
class CheckpointBarrier:
    """Marks the cut of checkpoint ``checkpoint_id`` in the stream."""

    checkpoint_id: int
    timestamp_ms: int

    def to_dict(self) -> dict:
        return {
            "type": "CheckpointBarrier",
            "checkpoint_id": self.checkpoint_id,
            "timestamp_ms": self.timestamp_ms,
        }


@dataclass(frozen=True)
class RescaleBarrier:
    """Marks the point at which operator ``operator_id`` switches to a new assignment.

    ``payload`` is JSON-compatible (the new key-group assignment etc.); it takes no
    part in hashing because dicts are not hashable.
    """

    rescale_id: str
    operator_id: str
    payload: dict = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict:
        return {
            "type": "RescaleBarrier",
            "rescale_id": self.rescale_id,
            "operator_id": self.operator_id,
            "payload": self.payload,
        }


@dataclass(frozen=True)
class Watermark:
    """Event time has reached ``timestamp``: no record older than it will follow."""

    timestamp: int

    def to_dict(self) -> dict:
        return {"type": "Watermark", "timestamp": self.timestamp}


@dataclass(frozen=True)
class WatermarkStatus:
    """Flink's WatermarkStatus: ``idle=True``: the sender will not advance its watermark for a
    while (a source whose splits are all idle, or a task whose inputs all are), so the receiver
    leaves this channel out of its minimum watermark; ``idle=False`` (or any record or
    watermark on the channel) makes it count again. Idle is not finished: an idle channel
    still delivers checkpoint barriers and may deliver records later."""

    idle: bool

    def to_dict(self) -> dict:
        return {"type": "WatermarkStatus", "idle": self.idle}


IDLE = WatermarkStatus(True)
ACTIVE = WatermarkStatus(False)

Event = Union[EndOfStream, CheckpointBarrier, RescaleBarrier, Watermark, WatermarkStatus]

_EVENT_TYPES = {cls.__name__: cls for cls in (EndOfStream, CheckpointBarrier, RescaleBarrier, Watermark,
                                              WatermarkStatus)}
_EVENT_CLASSES = tuple(_EVENT_TYPES.values())


def is_event(x) -> bool:
    """True if ``x`` is one of the control events (not a record batch)."""
    return isinstance(x, _EVENT_CLASSES)


def from_dict(d: dict) -> Event:
    """Rebuild an event from its ``to_dict()`` form.

    Raises:
        ValueError: ``d`` is not a dict, names no known event type, or its fields
            do not match that type's fields.
    """
    if not isinstance(d, dict):
        raise ValueError(f"an event dict was expected, got {type(d).__name__}: {d!r}")
    kind = d.get("type")
    cls = _EVENT_TYPES.get(kind)
    if cls is None:
        raise ValueError(f"unknown event type {kind!r}; known types: {sorted(_EVENT_TYPES)}")
    fields = {k: v for k, v in d.items() if k != "type"}
    try:
        return cls(**fields)
    except TypeError as exc:
        expected = sorted(cls.__dataclass_fields__)
        raise ValueError(
            f"bad fields for event {kind}: got {sorted(fields)}, expected {expected} ({exc})"
        ) from None
