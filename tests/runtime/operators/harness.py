"""Driving operators directly, as their tasks would: routing by key group like the hash
exchange, watermarks to every subtask, and a checkpoint through the real storage with a
restore at another parallelism."""

import numpy as np
import pyarrow as pa

from sabot._core import partition
from sabot.runtime.checkpoint_storage import CheckpointStorage
from sabot.runtime.operators.base import SideOutput, TaskContext, create_operator

MAX_PARALLELISM = 128


def make_op(operator_type, params, key_by=None, subtask=0, parallelism=1, metrics=None, inputs=("in",),
            clock=None, function=None):
    operator = {"name": f"{operator_type}-op", "operator_id": f"{operator_type}-op", "operator_type": operator_type,
                "key_by": list(key_by) if key_by else None, "function": function, "parameters": params}
    ctx = TaskContext(job_id="job", task_id=f"{operator_type}-{subtask}", attempt=0, operator=operator,
                      subtask_index=subtask, parallelism=parallelism, max_parallelism=MAX_PARALLELISM,
                      metrics=metrics if metrics is not None else {}, input_operator_ids=list(inputs),
                      clock=clock)
    op = create_operator(ctx)
    op.open()
    return op


def owner_of_key_groups(parallelism):
    owner = np.empty(MAX_PARALLELISM, dtype=np.int64)
    for i in range(parallelism):
        start, stop = partition.key_group_range(i, MAX_PARALLELISM, parallelism)
        owner[start:stop] = i
    return owner


def route(batch, keys, parallelism):
    """Split a batch by key group as the HASH exchange does (no keys: all to subtask 0)."""
    if parallelism == 1:
        return [batch]
    if not keys:
        return [batch] + [batch.slice(0, 0)] * (parallelism - 1)
    kg = partition.key_groups(partition.hash_columns(batch, list(keys)), MAX_PARALLELISM)
    dest = owner_of_key_groups(parallelism)[kg]
    return [batch.filter(pa.array(dest == i)) for i in range(parallelism)]


def feed(ops, events, keys_by_input):
    """Events: ``(input_index, batch)`` or ``("wm", ts)``. Returns every output (side ones too)."""
    out = []
    for ev in events:
        if ev[0] == "wm":
            for op in ops:
                out += op.on_watermark(ev[1])
            continue
        index, batch = ev
        for op, part in zip(ops, route(batch, keys_by_input[index], len(ops))):
            if part.num_rows:
                out += op.process(part, index)
    return out


def finish(ops):
    return [b for op in ops for b in op.finish()]


def main_rows(outputs):
    return [r for b in outputs if not isinstance(b, SideOutput) for r in b.to_pylist()]


def side_rows(outputs, tag="late"):
    return [r for b in outputs if isinstance(b, SideOutput) and b.tag == tag for r in b.batch.to_pylist()]


def through_storage(tmp_path, operator_id, snapshots, new_parallelism, checkpoint_id=7):
    """Write per-subtask snapshots with the real storage; read back per new subtask."""
    storage = CheckpointStorage(str(tmp_path / f"chk-{operator_id}-{new_parallelism}"))
    for sub, snap in enumerate(snapshots):
        if snap is None:
            continue
        if snap["keyed"] is not None and snap["keyed"].num_rows:
            storage.write_keyed_state("job", checkpoint_id, operator_id, sub, snap["keyed"], MAX_PARALLELISM)
        if snap["state"]:
            storage.write_operator_state("job", checkpoint_id, operator_id, sub, snap["state"])
    checkpoint = storage.commit("job", checkpoint_id)
    states = storage.read_operator_state(checkpoint, operator_id) if checkpoint.operator_handles(operator_id) else {}
    out = []
    for sub in range(new_parallelism):
        keyed = None
        if checkpoint.keyed_handles(operator_id):
            keyed = storage.read_keyed_state(checkpoint, operator_id,
                                             partition.key_group_range(sub, MAX_PARALLELISM, new_parallelism))
        out.append((keyed, states.get(sub)))
    return out


def restore_midway(tmp_path, make, events, keys_by_input, old_p, new_p, cut=None):
    """Run ``events`` on ``old_p`` subtasks up to ``cut``, snapshot, go on a little (that must
    not leak), restore into ``new_p`` fresh subtasks and run the rest there.

    ``make(subtask, parallelism)`` builds one subtask. Returns all outputs (before the cut
    from the old subtasks, after it from the new ones).
    """
    cut = len(events) // 2 if cut is None else cut
    old = [make(i, old_p) for i in range(old_p)]
    out = feed(old, events[:cut], keys_by_input)
    snaps = [op.snapshot_state(3) for op in old]
    feed(old, events[cut:cut + 3], keys_by_input)  # the old attempt goes on; none of this may count
    new = [make(i, new_p) for i in range(new_p)]
    op_id = new[0].ctx.operator["operator_id"]
    for op, (keyed, state) in zip(new, through_storage(tmp_path, op_id, snaps, new_p)):
        op.restore_state(keyed, state, 3)
    return out + feed(new, events[cut:], keys_by_input) + finish(new)
