"""The Source API: a source is a set of splits, an enumerator assigns them, readers read them.

Every source of Sabot (table, generator, files, Kafka) is built from three pieces, as in
Flink's FLIP-27:

* a :class:`Split` is one independently readable piece of the input: one file, one Kafka
  partition, one strided share of a table's slices or of a generator's batches. It has a
  stable ``id`` and a JSON-able ``description`` (what a reader needs to open it).
* a :class:`SplitEnumerator` knows every split of the source (``discover()`` adds the ones
  that appear later: new files in a directory, new partitions of a topic) and assigns each
  split to one source subtask.
* a reader, the source operator (:class:`SplitSource`), reads the splits assigned to its
  subtask and keeps a *position* per split; a split it read to the end is *finished*.

**Where the enumerator runs.** The assignment is a pure function of the split and the
parallelism (:meth:`Split.owner`): ``(start(group) + ordinal) % P``, ``start`` a stable
hash of the split's group (0 without a group). A static set of ``n`` splits numbered
``0..n-1`` without a group goes round robin (balanced: every subtask gets ``n // P`` or
``n // P + 1``); a Kafka partition is ``group=topic, ordinal=partition``, so every topic's
partitions are balanced too (Flink's Kafka enumerator uses the same rule); a file found by
directory monitoring is its own group (a stable hash). Because the rule does not depend on
*when* a split was seen, every subtask holds a copy of the enumerator and they all agree
without a coordinator round-trip, in an embedded run as in a cluster: subtask ``i`` reads
exactly the splits whose owner is ``i``, and a split one subtask discovered before another
still has one owner. The coordinator's part is the one it has for every source: at a live
rescale it collects the positions the old subtasks paused at and ships them to every new
subtask (``SourceStart``), and a restore hands every subtask the states of all old subtasks.

**Checkpoints.** A reader's state is ``{"splits": {split id: {"split": Split.to_dict(),
"position": ..., "finished": bool}}}`` for the splits it owns (finished ones included, so a
re-listed file is not read again). A restore at any parallelism merges the states of every
old subtask: that union *is* the enumerator's state (every split known at the checkpoint,
with its position); each new subtask keeps the splits it owns under the new parallelism.
Splits assigned to no reader state yet (discovered after the checkpoint, or only by a
subtask that does not own them) are found again by discovery and read from their start:
no record of theirs was before the checkpoint. A live rescale moves splits the same way.

**Watermarks per split.** With ``time_column`` set, the reader keeps the largest event time
of each split; its watermark (:meth:`SplitSource.current_watermark`) is the smallest over
its splits that are neither finished nor idle (no record for ``idle_timeout_ms``) minus
``max_out_of_orderness``, so one idle or slow split does not hold event time back.
:attr:`SplitSource.idle` says whether all of them are idle (for an idle status downstream).

Writing a source: subclass :class:`SplitSource`, give ``initial_splits()`` (and
``discover_splits()`` with a ``discovery_interval_s`` for a growing source), and either
``read_split(split, position)`` (a generator of ``(batch, position after it)``; the base
class interleaves or drains the splits) or your own ``read()`` that calls
:meth:`SplitSource.advance` (Kafka: one consumer for all partitions). See the README.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import zlib
from dataclasses import dataclass, field

import pyarrow as pa

from sabot.errors import OperatorError
from sabot.runtime.operators.base import SourceOperator

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_SPLITS", "Split", "SplitEnumerator", "SplitSource"]

#: splits of a source cut into numbered shares (table, generator, a PostgreSQL table by a
#: column) when not given: a live rescale or restore can go up to this many subtasks (or the
#: first attempt's parallelism, if higher) with every one busy
DEFAULT_SPLITS = 32


@dataclass(frozen=True)
class Split:
    """One independently readable piece of a source.

    Attributes:
        id: stable and unique within the source (a path, ``topic/partition``, ``slices/3``).
        ordinal: its number within its group (round robin by it).
        group: None for a numbered static set; a topic; a file path (its own group).
        description: JSON-able, what the reader needs to open it.
    """

    id: str
    ordinal: int = 0
    group: str | None = None
    description: dict = field(default_factory=dict)

    def owner(self, parallelism: int) -> int:
        """The subtask (of ``parallelism``) this split is assigned to."""
        if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 1:
            raise ValueError(f"parallelism must be an integer >= 1, got {parallelism!r}")
        start = 0 if self.group is None else zlib.crc32(self.group.encode()) % parallelism
        return (start + self.ordinal) % parallelism

    def to_dict(self) -> dict:
        return {"id": self.id, "ordinal": self.ordinal, "group": self.group, "description": dict(self.description)}

    @classmethod
    def from_dict(cls, data) -> "Split":
        ok = (isinstance(data, dict) and isinstance(data.get("id"), str) and data["id"]
              and isinstance(data.get("ordinal", 0), int) and not isinstance(data.get("ordinal", 0), bool)
              and data.get("ordinal", 0) >= 0
              and (data.get("group") is None or isinstance(data.get("group"), str))
              and isinstance(data.get("description", {}), dict))
        if not ok:
            raise ValueError("a split is {'id': non-empty str, 'ordinal': int >= 0, 'group': str | None, "
                             f"'description': dict}}; got {data!r}")
        return cls(data["id"], int(data.get("ordinal", 0)), data.get("group"), dict(data.get("description") or {}))


class SplitEnumerator:
    """Every split of one source, in the order they became known, and their assignment.

    Deterministic: the same splits give the same assignment in every process, and adding
    splits never moves one already assigned (:meth:`Split.owner`).
    """

    def __init__(self, splits=()):
        self._splits: dict[str, Split] = {}
        self.discover(splits)

    def discover(self, splits) -> list[Split]:
        """Add ``splits``; returns the ones not known before (in the given order).

        A split id seen again keeps its first definition (a restored split wins over a
        re-listed one)."""
        new = []
        for split in splits:
            if not isinstance(split, Split):
                raise TypeError(f"discover() takes Split objects, got {type(split).__name__}")
            if split.id not in self._splits:
                self._splits[split.id] = split
                new.append(split)
        return new

    @property
    def splits(self) -> list[Split]:
        return list(self._splits.values())

    def __contains__(self, split_id) -> bool:
        return split_id in self._splits

    def __len__(self) -> int:
        return len(self._splits)

    def get(self, split_id) -> Split:
        return self._splits[split_id]

    def assignment(self, parallelism: int) -> dict[int, list[Split]]:
        """``{subtask: [splits]}`` for every subtask (empty lists included)."""
        out = {i: [] for i in range(parallelism)}
        for split in self._splits.values():
            out[split.owner(parallelism)].append(split)
        return out

    def splits_for(self, subtask: int, parallelism: int) -> list[Split]:
        """The splits subtask ``subtask`` of ``parallelism`` reads, in the order they became known."""
        if not 0 <= subtask < parallelism:
            raise ValueError(f"subtask {subtask!r} is not in 0..{parallelism - 1}")
        return [s for s in self._splits.values() if s.owner(parallelism) == subtask]

    def snapshot(self) -> dict:
        """``{"splits": [split dicts]}``: every known split (JSON-able)."""
        return {"splits": [s.to_dict() for s in self._splits.values()]}

    @classmethod
    def restore(cls, state) -> "SplitEnumerator":
        if not isinstance(state, dict) or not isinstance(state.get("splits"), list):
            raise ValueError(f"an enumerator snapshot is {{'splits': [split dicts]}}; got {state!r}")
        return cls(Split.from_dict(d) for d in state["splits"])


class _SplitState:
    __slots__ = ("split", "position", "finished")

    def __init__(self, split, position, finished=False):
        self.split = split
        self.position = position
        self.finished = finished

    def to_dict(self):
        return {"split": self.split.to_dict(), "position": self.position, "finished": self.finished}


class SplitSource(SourceOperator):
    """The reader side of the Source API: the splits of this subtask, a position for each.

    Subclasses define:

    * ``initial_splits()``: the splits known when the source opens (every subtask lists the
      same ones; called once, lazily);
    * ``initial_position(split)``: where a split nobody read yet starts (default 0);
    * ``read_split(split, position)``: a generator of ``(batch, position)`` pairs: each batch
      with the split's position *after* it, or ``(batch, None)`` for a batch in the middle of
      a unit (no checkpoint or pause may fall there). It ends when the split is finished.
      ``interleave = True`` chooses the split again after every unit (smallest
      ``split_order(split_id)`` first; ordered sources split into strided shares take the
      lowest next unit); False reads the splits one after the other (files).
    * for a growing source, ``discover_splits()`` and ``discovery_interval_s`` (None: the
      split set is fixed and the source ends when its splits are finished).

    A source that reads several splits at once (Kafka) overrides ``read()`` and calls
    :meth:`advance` and :meth:`observe_event_time` itself.
    """

    rescalable = True
    interleave = False
    #: the splits are independent streams (files, partitions): a watermark per split. False
    #: for strided shares of one ordered sequence (table, generator): the task's watermark
    #: over the subtask's batches is the right one there, and such splits are never idle
    per_split_watermarks = True
    #: seconds between two ``discover_splits()`` calls; None: no discovery
    discovery_interval_s = None
    #: how long a subtask without work sleeps before yielding None (waiting for discovery)
    idle_sleep_s = 0.05

    def __init__(self, ctx):
        super().__init__(ctx)
        self.enumerator = None  # SplitEnumerator, built by _prepare()
        self._splits: dict[str, _SplitState] = {}  # this subtask's splits, in assignment order
        self._restored: dict[str, _SplitState] | None = None  # merged states waiting for _prepare()
        self._prepared = False
        self._generation = 0  # restores so far: a _prepare that saw an older one starts again
        self._restore_lock = threading.Lock()
        self._total_rows = None  # (number of splits, their rows): total_rows computed once per split set
        self._partial = False
        self._stopped = False  # an old task of a live rescale: its splits went to the new tasks
        self._last_discovery = None
        p = self.params
        self.time_column = p.get("time_column")
        self.out_of_orderness = int(p.get("max_out_of_orderness") or 0)
        idle = p.get("idle_timeout_ms")
        if idle is not None and (isinstance(idle, bool) or not isinstance(idle, (int, float)) or idle <= 0):
            raise OperatorError(f"source {ctx.operator_name!r}: idle_timeout_ms must be a positive number of "
                                f"milliseconds or None, got {idle!r}")
        self.idle_timeout_ms = idle
        self.tracks_watermarks = bool(self.time_column) and self.per_split_watermarks
        self._reading: dict = {}  # split id -> its read_split generator while it is being read
        self._split_max: dict[str, int] = {}  # split id -> largest event time read
        self._split_active: dict[str, int] = {}  # split id -> processing time (ms) it last delivered rows
        self._opened_at = None
        start = p.get("start_position")
        if start is not None:
            self.seek(start)

    # -- what subclasses define ------------------------------------------------------------

    def initial_splits(self) -> list[Split]:
        raise TypeError(f"split source {type(self).__name__} does not define initial_splits()")

    def discover_splits(self) -> list[Split]:
        return []

    def initial_position(self, split):
        return 0

    def read_split(self, split, position):
        raise TypeError(f"split source {type(self).__name__} does not define read_split()")

    # -- splits and positions --------------------------------------------------------------

    def _prepare(self):
        """Build the enumerator (restored splits first, then the listed ones) and take this
        subtask's splits. Idempotent; runs lazily. A restore (or a rescale's positions) that
        arrives while it runs (``open`` on the operator thread, the control message on the
        event loop) is not lost: the work is done again with it."""
        while not self._prepared:
            generation = self._generation
            restored = self._restored or {}
            # subclasses may look at the restored splits while listing (their split count)
            self.enumerator = SplitEnumerator(st.split for st in restored.values())
            self.enumerator.discover(self.initial_splits())
            splits = {}
            self._take(self.enumerator.splits, restored, splits)
            with self._restore_lock:
                if generation != self._generation:
                    continue  # restored meanwhile: take the splits again from that state
                self._opened_at = self._now_ms()
                self._last_discovery = time.monotonic()
                self._splits = splits
                self._restored = None
                self._prepared = True

    def _take(self, splits, restored=None, into=None):
        """Keep the splits of ``splits`` this subtask owns (at their restored or initial position)."""
        into = self._splits if into is None else into
        p, me = self.ctx.parallelism, self.ctx.subtask_index
        added = []
        for split in splits:
            if split.owner(p) != me or split.id in into:
                continue
            old = (restored or {}).get(split.id)
            state = _SplitState(split, old.position, old.finished) if old is not None \
                else _SplitState(split, self.initial_position(split))
            into[split.id] = state
            added.append(split)
        return added

    def discover(self):
        """Ask ``discover_splits()`` for new splits; take the ones this subtask owns.
        Returns the splits this subtask took."""
        self._prepare()
        self._last_discovery = time.monotonic()
        new = self.enumerator.discover(self.discover_splits())
        taken = self._take(new)
        if taken:
            log.info("source %s subtask %d: %d new split(s): %s", self.ctx.operator_name, self.ctx.subtask_index,
                     len(taken), [s.id for s in taken][:5])
            self.on_splits_added(taken)
        return taken

    def on_splits_added(self, splits):
        """Called after discovery added ``splits`` to this subtask (Kafka: assign them)."""

    def _discovery_due(self):
        return (self.discovery_interval_s is not None and not self._stopped
                and time.monotonic() - self._last_discovery >= self.discovery_interval_s)

    @property
    def splits(self) -> list[Split]:
        """This subtask's splits (finished ones included)."""
        self._prepare()
        return [st.split for st in self._splits.values()]

    @property
    def active_splits(self) -> list[Split]:
        self._prepare()
        return [st.split for st in self._splits.values() if not st.finished]

    @property
    def finished_splits(self) -> list[Split]:
        self._prepare()
        return [st.split for st in self._splits.values() if st.finished]

    def split_position(self, split_id):
        self._prepare()
        return self._splits[split_id].position

    def advance(self, split_id, position, finished=False):
        """Record that split ``split_id`` was read up to ``position`` (and maybe to its end)."""
        st = self._splits[split_id]
        st.position = position
        if finished:
            st.finished = True

    def finish_split(self, split_id):
        self._splits[split_id].finished = True

    @property
    def position(self):
        """``{"splits": {id: {"split", "position", "finished"}}}``: this subtask's splits."""
        self._prepare()
        return {"splits": {sid: st.to_dict() for sid, st in self._splits.items()}}

    def snapshot_state(self, checkpoint_id):
        return {"keyed": None, "state": self.position}

    def _merge(self, states):
        merged = {}
        for index, state in sorted(states.items()):
            if not state:
                continue
            splits = state.get("splits") if isinstance(state, dict) else None
            if not isinstance(splits, dict):
                raise OperatorError(
                    f"source {self.ctx.operator_name!r}: the state of subtask {index} is not a split state "
                    f"{{'splits': {{id: {{'split', 'position', 'finished'}}}}}}; got {str(state)[:200]}")
            for sid, entry in splits.items():
                try:
                    split = Split.from_dict(entry.get("split") if isinstance(entry, dict) else None)
                except ValueError as exc:
                    raise OperatorError(f"source {self.ctx.operator_name!r}: split {sid!r} of subtask {index}'s "
                                        f"state: {exc}") from None
                merged[sid] = _SplitState(split, entry.get("position"), bool(entry.get("finished")))
        return merged

    def restore_subtask_states(self, states, checkpoint_id):
        """Restore from the states of every old subtask (any parallelism): merge, keep mine."""
        states = {int(k): v for k, v in (states or {}).items()}
        merged = self._merge(states)
        with self._restore_lock:
            self._generation += 1  # a _prepare running now starts again from this state
            self._restored = merged
            self._prepared = False
            self._total_rows = None
            self._stopped = False
            self._partial = False
        log.info("source %s subtask %d of %d restored %d split(s) from %d subtask(s)", self.ctx.operator_name,
                 self.ctx.subtask_index, self.ctx.parallelism, len(merged), len(states))

    def restore_state(self, keyed, state, checkpoint_id):
        self.restore_subtask_states({self.ctx.subtask_index: state}, checkpoint_id)

    def seek(self, position):
        """Continue from ``position`` (as returned by ``position``; any subtask's)."""
        if not isinstance(position, dict) or not isinstance(position.get("splits"), dict):
            raise OperatorError(
                f"source {self.ctx.operator_name!r}: a position is {{'splits': {{split id: {{'split', "
                f"'position', 'finished'}}}}}} (as the source's position property gives it); got {position!r}")
        self.restore_subtask_states({0: position}, None)

    # -- live rescale: the splits move with their positions --------------------------------

    @property
    def at_unit_boundary(self):
        return not self._partial

    def stop_for_rescale(self):
        """An old task of a live rescale: stop here (its positions went to the new tasks)."""
        self._stopped = True

    def take_split_positions(self, positions):
        """A new task of a live rescale: take this task's splits from the old tasks' positions."""
        if not isinstance(positions, list) or not all(isinstance(p, dict) and "splits" in p for p in positions):
            raise OperatorError(f"source {self.ctx.operator_name!r}: a rescale needs the split positions the old "
                                f"tasks paused at (a list of {{'splits': ...}}); got {str(positions)[:200]}")
        self.restore_subtask_states(dict(enumerate(positions)), None)

    # -- event time: a watermark per split, idle splits left out ----------------------------

    def _now_ms(self):
        clock = self.ctx.clock
        return clock.now_ms() if clock is not None else time.time_ns() // 1_000_000

    def mark_active(self, split_ids):
        """These splits delivered records now (they are not idle)."""
        now = self._now_ms()
        for sid in split_ids:
            self._split_active[sid] = now

    def watermark_key(self, split_id):
        """Splits with the same key share one event-time clock (the largest time read, idle
        or not). Default: every split its own. The pieces of one file are one ordered
        sequence read lowest next unit first: they share the file's clock, as a whole file
        had, so event time moves on with every unit, not once every piece has delivered."""
        return split_id

    def observe_event_time(self, batch, split_id=None, split_ids=None, row_splits=None):
        """Note the event times of ``batch``: all from ``split_id``, or row ``r`` from split
        ``split_ids[row_splits[r]]``."""
        if split_id is not None:
            split_id = self.watermark_key(split_id)
            self.mark_active([split_id])
        else:
            self.mark_active(set(split_ids[i] for i in set(row_splits)))
        if not self.time_column or not batch.num_rows:
            return
        column = batch.column(self.time_column)
        if not pa.types.is_integer(column.type):
            column = column.cast(pa.int64())  # timestamps: their stored integer, as the task does
        if split_id is not None:
            import pyarrow.compute as pc

            maxima = [(split_id, pc.max(column).as_py())]
        else:
            table = pa.table({"split": pa.array(row_splits, pa.int32()), "t": column}) \
                .group_by("split", use_threads=False).aggregate([("t", "max")])
            maxima = [(split_ids[i], v) for i, v in zip(table.column("split").to_pylist(),
                                                         table.column("t_max").to_pylist())]
        for sid, value in maxima:
            if value is not None and (sid not in self._split_max or value > self._split_max[sid]):
                self._split_max[sid] = value

    def _split_idle(self, sid, now):
        if self.idle_timeout_ms is None:
            return False
        last = self._split_active.get(sid, self._opened_at)
        return last is not None and now - last >= self.idle_timeout_ms

    def current_watermark(self):
        """min over live splits of (largest event time read) - max_out_of_orderness.

        A finished split or an idle one (no record for ``idle_timeout_ms``) is left out; a
        live split that has not delivered a record yet holds event time back (None). With
        every split idle or finished: None (the task keeps the watermark it had).
        """
        if not self.time_column or not self._prepared:
            return None
        now = self._now_ms()
        marks = []
        for key in dict.fromkeys(self.watermark_key(sid) for sid in self.reading_splits()):
            if self._split_idle(key, now):
                continue
            if key not in self._split_max:
                return None
            marks.append(self._split_max[key])
        return min(marks) - self.out_of_orderness if marks else None

    def reading_splits(self) -> list[str]:
        """Ids of the splits being read now (started, not finished): they make the watermark.
        A split waiting its turn does not hold event time back (Flink's readers alike)."""
        return [sid for sid in list(self._reading) if not self._splits[sid].finished]

    @property
    def idle(self) -> bool:
        """With a watermark per split: True when none of this subtask's splits is live, i.e.
        every split being read is idle (no record for ``idle_timeout_ms``) and none waits its
        turn, or every split is finished, or it has none at all (more subtasks than splits; a
        directory waiting for files). The task then announces idle downstream
        (``WatermarkStatus``), so the operators after it do not wait for its watermark."""
        if not self.tracks_watermarks or not self._prepared or self._stopped:
            return False
        # copies: the event loop asks while the reading thread may take a discovered split
        live = [sid for sid, st in list(self._splits.items()) if not st.finished]
        if not live:
            return True
        reading = self.reading_splits()
        if len(reading) < len(live):
            return False  # a split waits its turn: this subtask has records to deliver
        now = self._now_ms()
        return all(self._split_idle(self.watermark_key(sid), now) for sid in reading)

    # -- reading ---------------------------------------------------------------------------

    def read(self):
        """Read this subtask's splits (see the class docs); yields batches, or None while a
        growing source has nothing to read (the task may checkpoint or pause meanwhile)."""
        self._prepare()
        readers = self._reading = {}  # split id -> the read_split generator in progress
        live = None  # split ids not finished; None: to be computed again (a split ended or came)
        heap = []  # interleave: (split_order, n, split id) of the live splits
        tick = itertools.count()
        watch = self.tracks_watermarks or self.idle_timeout_ms is not None
        while not self._stopped:
            if self._discovery_due() and self.discover():
                live = None
            if live is None:
                live = [sid for sid, st in self._splits.items() if not st.finished]
                if self.interleave:
                    heap = [(self.split_order(sid), next(tick), sid) for sid in live]
                    heapq.heapify(heap)
            if not live:
                if self.discovery_interval_s is None:
                    return
                time.sleep(self.idle_sleep_s)
                yield None
                continue
            sid = heapq.heappop(heap)[2] if self.interleave else live[0]
            st = self._splits[sid]
            reader = readers.get(sid)
            if reader is None:
                reader = readers[sid] = iter(self.read_split(st.split, st.position))
            # one unit of this split (interleave), or the whole split
            while True:
                item = next(reader, None)
                if item is None:
                    st.finished = True
                    self._partial = False
                    readers.pop(sid, None)
                    live = None
                    break
                batch, position = item
                if position is None:
                    self._partial = True
                else:
                    st.position = position
                    self._partial = False
                if batch is not None and (batch.num_rows or self._emit_empty(batch)):
                    if watch:
                        self.observe_event_time(batch, split_id=sid)
                    yield batch
                elif not self._partial and self._discovery_due():
                    yield None  # a long split without rows: let the task breathe
                if self._stopped and not self._partial:
                    return
                if position is not None:
                    if self.interleave:
                        heapq.heappush(heap, (self.split_order(sid), next(tick), sid))
                        break
                    if self._discovery_due():
                        break

    def split_order(self, split_id):
        """With ``interleave``: the key by which the next split is chosen after every unit
        (smallest first; ties in turn). Default: units read from it, i.e. round robin."""
        return self._splits[split_id].position or 0

    def _emit_empty(self, batch):
        return False

    @property
    def total_rows(self):
        """Rows of this subtask's splits when the source knows them (progress), else None.

        Status reports ask from the event loop: before the splits are taken (open, restore)
        the answer is None, and it is computed once per split set."""
        if not self._prepared:
            return None
        if self._total_rows is None or self._total_rows[0] != len(self._splits):
            rows = 0
            for st in list(self._splits.values()):
                n = self.split_rows(st.split)
                if n is None:
                    rows = None
                    break
                rows += n
            self._total_rows = (len(self._splits), rows)
        return self._total_rows[1]

    def split_rows(self, split):
        return None
