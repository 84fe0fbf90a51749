"""Process functions of the tests (module level: tasks import them by reference)."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sabot import KeyedProcessFunction

OUT = pa.schema([("k", pa.int64()), ("kind", pa.string()), ("first", pa.int64()), ("n", pa.int64()),
                 ("total", pa.int64()), ("distinct_s", pa.int64())])
EPISODE = 100  # event-time length of an episode
PROC_DELAY = 50  # processing-time ms after an episode starts


def first_rows_per_key(batch, mask, keys=("k",)):
    """Indices of the first row of each key among the rows where ``mask``."""
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return idx
    t = pa.table({**{k: batch.column(k).take(pa.array(idx)) for k in keys}, "i": pa.array(idx)})
    return np.sort(t.group_by(list(keys), use_threads=False).aggregate([("i", "min")]).column("i_min").to_numpy())


class Episodes(KeyedProcessFunction):
    """Per key, an episode starts at a row of an idle key and ends when the watermark passes
    its start + EPISODE: then one row (start, rows, sum of v, distinct s) and the key is idle
    again. A processing-time timer PROC_DELAY ms after the start emits a "proc" row."""

    episode = EPISODE

    def open(self, ctx):
        self.first = ctx.value_state("first", pa.int64())
        self.values = ctx.list_state("values", pa.schema([("v", pa.int64())]))
        self.by_s = ctx.map_state("by_s", pa.string(), pa.int64())

    def process(self, batch, ctx):
        first = self.first.get(batch)
        starts = first_rows_per_key(batch, first.is_null().to_numpy(zero_copy_only=False))
        if len(starts):
            rows = batch.take(pa.array(starts))
            self.first.update(rows, rows.column("t"))
            ctx.register_event_time_timer(rows, pc.add(rows.column("t"), self.episode))
            now = ctx.current_processing_time
            ctx.register_processing_time_timer(rows, pa.array(np.full(len(starts), now + PROC_DELAY)))
        self.values.add(batch, batch.select(["v"]))
        counts = pa.Table.from_batches([batch]).group_by(["k", "s"], use_threads=False).aggregate([([], "count_all")])
        have = pc.fill_null(self.by_s.get(counts, counts.column("s")), 0)
        self.by_s.put(counts, counts.column("s"), pc.add(have, counts.column("count_all")))
        return None

    def on_timer(self, timers, ctx):
        event = timers.filter(pc.equal(timers.column("domain"), "event"))
        proc = timers.filter(pc.equal(timers.column("domain"), "processing"))
        out = []
        if proc.num_rows:
            n = proc.num_rows
            out.append(pa.table({"k": proc.column("k"), "kind": pa.array(["proc"] * n), "first": pa.nulls(n, pa.int64()),
                                 "n": pa.nulls(n, pa.int64()), "total": pa.nulls(n, pa.int64()),
                                 "distinct_s": pa.nulls(n, pa.int64())}, schema=OUT))
        if event.num_rows:
            values = self.values.get(event)
            per = values.group_by("row").aggregate([("v", "count"), ("v", "sum")]).sort_by("row")
            entries = self.by_s.entries(event).group_by("row").aggregate([("key", "count")]).sort_by("row")
            assert per.column("row").to_pylist() == list(range(event.num_rows))
            out.append(pa.table({"k": event.column("k"), "kind": pa.array(["episode"] * event.num_rows),
                                 "first": self.first.get(event), "n": per.column("v_count"),
                                 "total": per.column("v_sum"), "distinct_s": entries.column("key_count")},
                                schema=OUT))
            for state in (self.first, self.values, self.by_s):
                state.clear(event)
        return out


class WholeStream(Episodes):
    """One episode per key over the whole input (its timer fires at the end): a result that
    does not depend on when watermarks arrive. No processing-time rows."""

    episode = 1 << 60

    def process(self, batch, ctx):
        first = self.first.get(batch)
        starts = first_rows_per_key(batch, first.is_null().to_numpy(zero_copy_only=False))
        if len(starts):
            rows = batch.take(pa.array(starts))
            self.first.update(rows, rows.column("t"))
            ctx.register_event_time_timer(rows, pc.add(rows.column("t"), self.episode))
        self.values.add(batch, batch.select(["v"]))
        counts = pa.Table.from_batches([batch]).group_by(["k", "s"], use_threads=False).aggregate([([], "count_all")])
        have = pc.fill_null(self.by_s.get(counts, counts.column("s")), 0)
        self.by_s.put(counts, counts.column("s"), pc.add(have, counts.column("count_all")))


def as_episode_input(batch):
    """keyed_records rows as the process functions' input: k, t, v, s."""
    import time

    time.sleep(0.002)
    key = batch.column("key")
    return pa.RecordBatch.from_arrays(
        [key, batch.column("ts"), pa.compute.cast(pa.compute.floor(pa.compute.multiply(batch.column("value"), 10)), pa.int64()),
         pa.compute.cast(pa.compute.bit_wise_and(key, 3), pa.string())], names=["k", "t", "v", "s"])
