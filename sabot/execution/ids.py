"""Identity value types of the physical plan (Flink's ExecutionAttemptID idea)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sabot.errors import InvalidRequest

__all__ = ["ID_PATTERN", "AttemptId", "is_valid_id"]

#: job, operator and worker (node) ids name files (checkpoints, output parts), URLs and
#: channels: 1-128 letters, digits, ``_``, ``.``, ``-``, not starting with ``.``
ID_PATTERN = r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}"
ID_RULE = "use 1-128 letters, digits, '_', '.' or '-', not starting with '.'"
_ID = re.compile(ID_PATTERN)


def is_valid_id(value) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True, order=True)
class AttemptId:
    """One attempt of one task: ``(task_id, attempt)``.

    Every restart or redeploy of a task makes a new attempt (``attempt + 1``). Every
    message about a task (deployment, report, checkpoint acknowledgement, control
    message) and every channel id carries the attempt it belongs to, so anything from a
    superseded attempt is recognised and dropped (:meth:`is_superseded_by`).

    Example:
        >>> a = AttemptId("map:3", 2)
        >>> str(a), a.next()
        ('map:3#2', AttemptId(task_id='map:3', attempt=3))
    """

    task_id: str
    attempt: int = 0

    def __post_init__(self):
        if not isinstance(self.task_id, str) or not self.task_id:
            raise ValueError(f"AttemptId: task_id must be a non-empty string, got {self.task_id!r}")
        if isinstance(self.attempt, bool) or not isinstance(self.attempt, int) or self.attempt < 0:
            raise ValueError(f"AttemptId({self.task_id!r}): attempt must be an integer >= 0, got {self.attempt!r}")

    def __str__(self):
        return f"{self.task_id}#{self.attempt}"

    def next(self) -> AttemptId:
        """The attempt that replaces this one."""
        return AttemptId(self.task_id, self.attempt + 1)

    def is_superseded_by(self, other: AttemptId) -> bool:
        """True when ``other`` is a newer attempt of the same task."""
        return other.task_id == self.task_id and other.attempt > self.attempt

    def to_dict(self) -> dict:
        return {"task_id": self.task_id, "attempt": self.attempt}

    @classmethod
    def from_dict(cls, data, what="attempt id") -> AttemptId:
        if not isinstance(data, dict) or set(data) != {"task_id", "attempt"}:
            raise InvalidRequest(f"{what} must be an object {{'task_id': str, 'attempt': int}}, got {data!r}")
        try:
            return cls(data["task_id"], data["attempt"])
        except ValueError as exc:
            raise InvalidRequest(f"{what}: {exc}") from None
