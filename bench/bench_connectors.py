"""Connector throughput against the client libraries used directly, in one process and run.

Kafka (librdkafka's mock cluster in this process, or $SABOT_KAFKA_BOOTSTRAP): a topic of 4
partitions holds ``--records`` records (100-byte values, keys) produced before timing.
  * baseline: confluent-kafka's own consumer loop reading the topic into Arrow (``assign``
    all partitions, ``consume(10000)``, key and value columns built per call), with the
    ``fetch.queue.backoff.ms`` Sabot's source sets (20 ms; ``--librdkafka-defaults``: 1000);
  * Sabot: ``Stream.from_kafka(..., bounded=True)`` into a sink that drops the batches
    (parallelism 1, then 2), the whole job run in this process (deploy included).

PostgreSQL (a private server, :class:`sabot.testing.PostgresServer`): ``--rows`` rows of
(bigint, text, float8, timestamp) into an empty table (truncated before every run).
  * baseline: psycopg ``COPY ... FROM STDIN (FORMAT csv)`` of the Arrow table written as
    CSV by Arrow (the fastest plain way to load an Arrow table with psycopg);
  * psycopg ``copy.write_row`` over the rows (what a Python loop does);
  * Sabot: ``Stream.from_table(t).to_postgres(...)`` (append, no checkpoints: COPY every
    ``batch_rows`` rows), the whole job run in this process.

Every run is checked (row counts) so a fast wrong run does not count; cases are
interleaved and warmed up (bench/_harness.py).

    python bench/bench_connectors.py --quick
    python bench/bench_connectors.py --json out.json
"""

import argparse
import datetime
import io
import os
import sys

import pyarrow as pa
import pyarrow.csv as pacsv

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import Report, measure, table  # noqa: E402

from sabot import Stream  # noqa: E402
from sabot.testing import KafkaTestCluster, PostgresServer  # noqa: E402

_seen = [0]
#: the consumer setting Sabot's source uses (librdkafka's default, 1000 ms, stalls a fast
#: reader for up to a second whenever its prefetch queue filled up); --librdkafka-defaults
#: gives the baseline librdkafka's own default instead
BASELINE_FETCH = {"fetch.queue.backoff.ms": 20}


def blackhole(batch):
    _seen[0] += batch.num_rows


def kafka_bench(records, repeat):
    from confluent_kafka import Consumer, TopicPartition

    with KafkaTestCluster() as kafka:
        topic = f"bench-{os.getpid()}"
        kafka.create_topic(topic, partitions=4)
        kafka.produce(topic, [b"x" * 92 + b"%08d" % i for i in range(records)],
                      keys=[b"k%d" % (i % 1000) for i in range(records)], partitions=[i % 4 for i in range(records)])

        def consumer_loop():
            consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "bench", "enable.auto.commit": False,
                                 **BASELINE_FETCH})
            consumer.assign([TopicPartition(topic, p, 0) for p in range(4)])
            rows = 0
            while rows < records:
                messages = consumer.consume(10_000, 0.1)
                keys, values = [], []
                for m in messages:
                    if m.error() is None:
                        keys.append(m.key())
                        values.append(m.value())
                if values:
                    batch = pa.RecordBatch.from_arrays([pa.array(keys, pa.binary()), pa.array(values, pa.binary())],
                                                       names=["key", "value"])
                    rows += batch.num_rows
            consumer.close()
            return rows

        def sabot(parallelism):
            def run():
                _seen[0] = 0
                (Stream.from_kafka(kafka.bootstrap, topic, bounded=True, metadata=[]).parallelism(parallelism)
                 .sink(blackhole).run(timeout=300))
                return _seen[0]
            return run

        cases = {"confluent-kafka consumer loop -> Arrow": consumer_loop,
                 "Sabot from_kafka -> blackhole, p=1": sabot(1),
                 "Sabot from_kafka -> blackhole, p=2": sabot(2)}

        def check(name, rows):
            assert rows == records, (name, rows, records)

        results = measure(cases, repeat=repeat, warmup=1, check=check)
        return results, ("mock cluster" if kafka.is_mock else kafka.bootstrap)


def postgres_bench(rows, repeat):
    import psycopg

    ids = pa.array(range(rows), pa.int64())
    t = pa.table({"id": ids, "name": pa.array([f"user-{i % 5000}" for i in range(rows)]),
                  "amount": pa.array([i / 7 for i in range(rows)], pa.float64()),
                  "at": pa.array([datetime.datetime(2024, 1, 1) + datetime.timedelta(seconds=i) for i in range(rows)],
                                 pa.timestamp("us"))})
    with PostgresServer() as pg:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE bench (id bigint, name text, amount float8, at timestamp)")

        def truncate():
            with psycopg.connect(pg.dsn, autocommit=True) as conn:
                conn.execute("TRUNCATE bench")

        def count():
            with psycopg.connect(pg.dsn) as conn:
                return conn.execute("SELECT count(*) FROM bench").fetchone()[0]

        def copy_csv():
            truncate()
            with psycopg.connect(pg.dsn) as conn, conn.cursor() as cur:
                with cur.copy("COPY bench (id, name, amount, at) FROM STDIN (FORMAT csv)") as copy:
                    for batch in t.to_batches(max_chunksize=65536):
                        buf = io.BytesIO()
                        pacsv.write_csv(batch, buf, write_options=pacsv.WriteOptions(include_header=False))
                        copy.write(buf.getbuffer())
            return count()

        def copy_rows():
            truncate()
            with psycopg.connect(pg.dsn) as conn, conn.cursor() as cur:
                with cur.copy("COPY bench (id, name, amount, at) FROM STDIN") as copy:
                    for batch in t.to_batches(max_chunksize=65536):
                        for row in zip(*(c.to_pylist() for c in batch.columns)):
                            copy.write_row(row)
            return count()

        def sabot():
            truncate()
            Stream.from_table(t).to_postgres(pg.dsn, "bench").run(timeout=300)
            return count()

        cases = {"psycopg COPY of Arrow CSV": copy_csv, "psycopg COPY write_row": copy_rows,
                 "Sabot to_postgres (append)": sabot}

        def check(name, n):
            assert n == rows, (name, n, rows)

        return measure(cases, repeat=repeat, warmup=1, check=check)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # librdkafka's mock cluster keeps ~45k records of 100 bytes per partition: 4 x 40k fit
    parser.add_argument("--records", type=int, default=160_000, help="Kafka records")
    parser.add_argument("--rows", type=int, default=400_000, help="PostgreSQL rows")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100k records and rows")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--librdkafka-defaults", action="store_true",
                        help="the baseline consumer with librdkafka's default fetch.queue.backoff.ms (1000)")
    args = parser.parse_args()
    if args.librdkafka_defaults:
        BASELINE_FETCH.clear()
    if args.quick:
        args.records = args.rows = 100_000
    kafka_results, where = kafka_bench(args.records, args.repeat)
    print(f"Kafka source, {args.records} records of 100 bytes, 4 partitions ({where}):")
    print(table(kafka_results, baseline="confluent-kafka consumer loop -> Arrow", work=args.records, unit="records"))
    pg_results = postgres_bench(args.rows, args.repeat)
    print(f"\nPostgreSQL sink, {args.rows} rows (bigint, text, float8, timestamp):")
    print(table(pg_results, baseline="psycopg COPY of Arrow CSV", work=args.rows, unit="rows"))
    if args.json:
        report = Report("bench_connectors", records=args.records, rows=args.rows, repeat=args.repeat,
                        kafka=where, baseline_fetch=dict(BASELINE_FETCH))
        report.add("kafka source", kafka_results, baseline="confluent-kafka consumer loop -> Arrow")
        report.add("postgres sink", pg_results, baseline="psycopg COPY of Arrow CSV")
        report.headline(f"Kafka source → blackhole, {args.records:,} records of 100 B, 4 partitions ({where}), p = 1",
                        "kafka source", "Sabot from_kafka -> blackhole, p=1",
                        note="job deploy included; both consumers with fetch.queue.backoff.ms=20")
        report.headline(f"PostgreSQL append sink, {args.rows:,} rows (bigint, text, float8, timestamp)",
                        "postgres sink", "Sabot to_postgres (append)")
        report.write(args.json)

if __name__ == "__main__":
    main()
