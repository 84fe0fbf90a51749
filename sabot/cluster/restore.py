"""Starting a job from a checkpoint: find it, and map its state onto the new job.

``submit_stream_job(graph, restore_from=...)`` names an earlier job of this
coordinator (its latest completed checkpoint), a checkpoint directory
(``.../<job>/chk-<n>``) or a job's checkpoint directory (its latest valid one).
:func:`map_checkpoint` matches the checkpoint's state to the new job's operators (by
id, else by unique name) and checks the parallelism rules: keyed state is re-split
by key group, so keyed operators may change parallelism; operators with per-subtask
state (source offsets, sink files) must keep theirs.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os

from sabot.errors import Conflict, InvalidRequest, NotFound
from sabot.execution.deployment import RestoreSpec
from sabot.runtime.checkpoint_storage import CheckpointStorage, CompletedCheckpoint

log = logging.getLogger(__name__)

__all__ = ["RestoreSource", "map_checkpoint", "resolve_restore"]


@dataclasses.dataclass
class RestoreSource:
    """Where a job starts from: the spec handed to its tasks, what the API shows, and the
    checkpoints passed over as corrupt."""

    spec: RestoreSpec
    info: dict
    skipped: list


async def resolve_restore(job, restore_from, jobs, now_wall, offload=asyncio.to_thread) -> RestoreSource:
    """The checkpoint ``restore_from`` names, mapped onto ``job``.

    Args:
        job: the new :class:`~sabot.cluster.job.JobRecord`.
        restore_from: a job id of ``jobs``, or a checkpoint path / URI.
        jobs: ``{job_id: JobRecord}`` of this coordinator.
        now_wall: wall time for the ``restored_from`` record.

    Raises:
        InvalidRequest: not a job id or path, or a checkpoint that does not fit the job.
        NotFound: no such job or checkpoint directory, or the named checkpoint is not valid.
        Conflict: the job or directory has no completed checkpoint.
    """
    if not isinstance(restore_from, str) or not restore_from:
        raise InvalidRequest(f"restore_from must be a job id or a checkpoint path, got {restore_from!r}")
    old = jobs.get(restore_from)
    if old is not None:
        if old.checkpointing is None:
            raise Conflict(f"job {restore_from} has no checkpoint storage")
        storage, old_job_id, wanted = old.checkpointing.storage, old.job_id, None
    else:
        path = restore_from.rstrip("/")
        base = path.rsplit("/", 1)[-1]
        wanted = None
        if base.startswith("chk-") and base[4:].isdigit():
            wanted = int(base[4:])
            path = path.rsplit("/", 1)[0]
        if "/" not in path:
            raise NotFound(f"restore_from {restore_from!r} is neither a job of this coordinator "
                           f"(known: {sorted(jobs)[-10:]}) nor a checkpoint directory")
        root, old_job_id = path.rsplit("/", 1)
        if "://" not in root and not os.path.isdir(path):
            raise NotFound(f"restore_from {restore_from!r}: no checkpoint directory {path}")
        storage = await offload(CheckpointStorage, root)
    found = await offload(storage.list_completed, old_job_id)
    skipped = [dataclasses.asdict(s) for s in storage.skipped]
    if wanted is not None:
        found = [c for c in found if c.checkpoint_id == wanted]
        if not found:
            reasons = [s["reason"] for s in skipped if s["checkpoint_id"] == wanted]
            raise NotFound(f"restore_from {restore_from!r}: checkpoint {wanted} of job {old_job_id} is not a "
                           f"valid completed checkpoint" + (f" ({reasons[0]})" if reasons else ""))
    if not found:
        raise Conflict(f"restore_from {restore_from!r}: job {old_job_id} has no completed checkpoint in "
                       f"{storage.uri}" + (f"; skipped: {[s['reason'] for s in skipped]}" if skipped else ""))
    checkpoint = map_checkpoint(job, found[0])
    info = {"job_id": old_job_id, "checkpoint_id": checkpoint.checkpoint_id, "path": checkpoint.path,
            "at": now_wall}
    log.info("job %s starts from checkpoint %d of job %s (%s)", job.job_id, checkpoint.checkpoint_id,
             old_job_id, checkpoint.path)
    return RestoreSource(RestoreSpec(storage.uri, checkpoint.to_dict()), info, skipped)


def map_checkpoint(job, checkpoint) -> CompletedCheckpoint:
    """Rename the checkpoint's operator ids to ``job``'s and check the parallelism rules."""
    old_ops = (checkpoint.metadata or {}).get("operators") or {}
    new_ops = job.job_graph.operators
    by_name = collections.defaultdict(list)
    for op_id, op in new_ops.items():
        by_name[op.name].append(op_id)
    rename = {}
    for old_id in checkpoint.operator_ids():
        if old_id in new_ops:
            rename[old_id] = old_id
            continue
        name = (old_ops.get(old_id) or {}).get("name")
        matches = by_name.get(name, [])
        if len(matches) != 1:
            raise InvalidRequest(
                f"restore: checkpoint {checkpoint.checkpoint_id} holds state of operator {old_id!r} "
                f"(name {name!r}), which matches {len(matches)} operators of the new job "
                f"(ids {sorted(new_ops)}); keep operator ids or unique names")
        rename[old_id] = matches[0]
    for old_id, new_id in rename.items():
        op = new_ops[new_id]
        new_par = job.exec_graph.parallelism_of(new_id)
        keyed = checkpoint.keyed_handles(old_id)
        operator_state = checkpoint.operator_handles(old_id)
        old_par = (old_ops.get(old_id) or {}).get("parallelism")
        if old_par is None and operator_state:
            old_par = max(h["subtask_index"] for h in operator_state) + 1
        if keyed and keyed[0]["max_parallelism"] != op.max_parallelism:
            raise InvalidRequest(
                f"restore: operator {op.name!r} has max_parallelism {op.max_parallelism} but its keyed state "
                f"in checkpoint {checkpoint.checkpoint_id} was cut into {keyed[0]['max_parallelism']} key "
                f"groups; keep max_parallelism")
        if operator_state and old_par is not None and old_par != new_par:
            raise InvalidRequest(
                f"restore: operator {op.name!r} ({op.operator_type.value}) ran at parallelism {old_par} in "
                f"checkpoint {checkpoint.checkpoint_id} and keeps per-subtask state (source offsets, sink files), "
                f"so it must keep that parallelism; the new job asks for {new_par}. Only keyed operators can "
                "change parallelism on restore")
    if all(k == v for k, v in rename.items()):
        return checkpoint
    handles = [dict(h, operator_id=rename.get(h["operator_id"], h["operator_id"])) for h in checkpoint.handles]
    return dataclasses.replace(checkpoint, handles=handles)
