"""Connectors to external systems: PostgreSQL (:mod:`sabot.connectors.postgres`) and Kafka
(:mod:`sabot.connectors.kafka`).

Each module holds the operators (registered as source / sink kinds, so workers find them)
and the Arrow <-> external type mapping; the Stream API declares them
(``Stream.from_postgres``, ``Stream.to_postgres``, ``Stream.from_kafka``, ``Stream.to_kafka``).
The client libraries (psycopg 3, confluent-kafka) are imported when an operator opens.
"""

import pyarrow as pa

from sabot.errors import OperatorError


class ConnectorError(OperatorError):
    """An external system refused or could not be reached; the message says which, where, and
    what to check. Raised from a task, it fails the task and goes through the job's restart
    strategy."""


def table_to_ipc(table):
    """Arrow IPC stream bytes of ``table`` (a sink's pending rows inside its checkpoint state)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def ipc_to_table(data):
    return pa.ipc.open_stream(pa.py_buffer(bytes(data))).read_all()
