"""Which ended jobs the coordinator still keeps (Flink's job store: a capacity and an expiry).

A job that ended stays readable (``GET /jobs/{id}``, its result, its checkpoints) until
more than ``max_jobs`` jobs ended after it or it ended more than ``ttl_s`` ago. Then the
coordinator forgets it everywhere (see ``ClusterCoordinator._forget_job``) and tells its
workers to drop its tasks, so a long-lived cluster running many short jobs keeps a flat
memory footprint. The ids of the last forgotten jobs are remembered, so a request for one
says what happened instead of "no such job".
"""

from __future__ import annotations

import collections

__all__ = ["EndedJobs"]


class EndedJobs:
    """The ended jobs still kept, oldest first.

    Example:
        >>> ended = EndedJobs(max_jobs=2, ttl_s=60)
        >>> for i, job_id in enumerate("abc"):
        ...     ended.ended(job_id, at=float(i))
        >>> ended.due(now=3.0)
        ['a']
        >>> ended.forget("a"); ended.was_forgotten("a")
        True
        >>> ended.due(now=70.0)
        ['b', 'c']
    """

    def __init__(self, max_jobs: int, ttl_s: float, remembered: int = 1000):
        if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
            raise ValueError(f"retain_ended_jobs must be an integer >= 1, got {max_jobs!r}")
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not ttl_s > 0:
            raise ValueError(f"ended_job_ttl_s must be a positive number of seconds, got {ttl_s!r}")
        self.max_jobs = max_jobs
        self.ttl_s = float(ttl_s)
        self._ended = collections.OrderedDict()  # job id -> when it ended, oldest first
        self._forgotten = collections.OrderedDict()  # the last `remembered` forgotten ids
        self._remembered = remembered

    def __len__(self):
        return len(self._ended)

    def ended(self, job_id: str, at: float) -> None:
        self._ended[job_id] = at
        self._ended.move_to_end(job_id)

    def due(self, now: float) -> list[str]:
        """The jobs to forget now: beyond the capacity (oldest first) or expired."""
        due = []
        excess = len(self._ended) - self.max_jobs
        for job_id, at in self._ended.items():
            if excess > 0 or now - at > self.ttl_s:
                due.append(job_id)
                excess -= 1
            else:
                break
        return due

    def forget(self, job_id: str) -> None:
        self._ended.pop(job_id, None)
        self._forgotten[job_id] = None
        while len(self._forgotten) > self._remembered:
            self._forgotten.popitem(last=False)

    def was_forgotten(self, job_id: str) -> bool:
        return job_id in self._forgotten
