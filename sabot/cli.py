"""The ``sabot`` command: run a coordinator, workers, a local cluster, jobs.

::

    sabot coordinator [--host H --port P --token T]
    sabot worker --coordinator URL [--slots N --host H --port P --token T]
    sabot cluster start --workers N --slots S          # foreground; Ctrl-C stops everything
    sabot run FILE_OR_MODULE[:ATTR] [--workers N --slots S --parallelism P]
    sabot job submit FILE|JSON --coordinator URL
    sabot job list|status JOB_ID|cancel JOB_ID --coordinator URL
    sabot sql -f SCRIPT.sql [--var NAME=VALUE ...] [--coordinator URL] [--parallelism P]

``--coordinator`` defaults to ``$SABOT_COORDINATOR`` (else http://127.0.0.1:8081). The
cluster secret comes from ``--token-file`` (a file only you can read), ``$SABOT_TOKEN`` or
``$SABOT_TOKEN_FILE``; ``--token`` works but is readable by every local user in
/proc/<pid>/cmdline. Binding anything but 127.0.0.1 needs a secret.
"""

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
import time

from sabot._version import __version__
from sabot.cluster.config import CoordinatorConfig

DEFAULT_COORDINATOR = "http://127.0.0.1:8081"


def _run_loop(coro):
    from sabot._loop import run

    return run(coro)


def _setup_logging(verbose, quiet=False):
    # servers log their lifecycle; one-shot commands only warnings (their output is the point)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(message, code=2):
    print(f"sabot: error: {message}", file=sys.stderr)
    return code


# -- loading user jobs ----------------------------------------------------------------------


def load_target(target):
    """Load ``FILE_OR_MODULE[:ATTR]``; return ``(object, import_path_or_None)``.

    A file is imported as a module named after it (its directory is put on
    sys.path, and on the workers' path), so the functions it defines are
    shippable as ``"<file stem>:<function>"``. Without ``ATTR`` the module must
    hold exactly one JobGraph, or exactly one Stream ending in a sink.
    """
    spec, _, attr = target.partition(":") if not os.path.exists(target) else (target, "", "")
    if len(spec) == 1 and attr.startswith("\\"):  # a Windows drive letter, not an attribute
        spec, attr = target, ""
    path = None
    if spec.endswith(".py") or os.path.exists(spec):
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"no such file: {spec!r}")
        path = os.path.dirname(os.path.abspath(spec))
        if path not in sys.path:
            sys.path.insert(0, path)
        module_name = os.path.splitext(os.path.basename(spec))[0]
    else:
        module_name = spec
    module = importlib.import_module(module_name)
    if attr:
        obj = module
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise AttributeError(f"{module_name!r} has no attribute {attr!r}")
            obj = getattr(obj, part)
        if callable(obj) and not _is_job(obj):
            obj = obj()
        if not _is_job(obj):
            raise TypeError(f"{target!r} is a {type(obj).__name__}, not a Stream or JobGraph")
        return obj, path
    return _find_job(module, module_name), path


def _is_job(obj):
    from sabot.execution.job_graph import JobGraph

    return isinstance(obj, JobGraph) or (not isinstance(obj, type) and hasattr(obj, "to_job_graph"))


def _find_job(module, module_name):
    from sabot.execution.job_graph import JobGraph

    graphs = {k: v for k, v in vars(module).items() if isinstance(v, JobGraph)}
    if len(graphs) == 1:
        return next(iter(graphs.values()))
    from sabot.api.stream import StreamSink

    sinks = {k: v for k, v in vars(module).items() if isinstance(v, StreamSink)}
    if not graphs and len(sinks) == 1:
        return next(iter(sinks.values()))
    found = sorted(graphs) or sorted(sinks)
    if found:
        raise ValueError(
            f"module {module_name!r} holds several jobs ({', '.join(found)}); pick one with "
            f"{module_name}:NAME"
        )
    raise ValueError(
        f"module {module_name!r} holds no JobGraph and no Stream ending in a sink; name one with "
        f"{module_name}:NAME (an object with .to_job_graph(), a JobGraph, or a function returning one)"
    )


def to_job_graph(obj, parallelism=None, job_name=None):
    from sabot.execution.job_graph import JobGraph

    if isinstance(obj, JobGraph):
        return obj
    kwargs = {"shippable": True}
    if parallelism:
        kwargs["default_parallelism"] = parallelism
    if job_name:
        kwargs["job_name"] = job_name
    return obj.to_job_graph(**kwargs)


# -- output ---------------------------------------------------------------------------------


def format_table(table, limit=20):
    """A plain-text preview of a pyarrow Table (first ``limit`` rows)."""
    cols = table.column_names
    rows = table.slice(0, limit).to_pylist()
    cells = [[str(c) for c in cols]] + [[_cell(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if table.num_rows > limit:
        lines.append(f"... {table.num_rows - limit} more rows ({table.num_rows} in all)")
    return "\n".join(lines)


def _cell(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _bar(fraction, width=30):
    fraction = min(1.0, max(0.0, fraction))
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "." * (width - filled) + f"] {fraction * 100:5.1f}%"


class Progress:
    """Turns successive GET /jobs/{id} documents into progress lines (rows/s per operator)."""

    def __init__(self):
        self.last = None

    def line(self, job, now):
        rows = {op["name"]: op["rows_processed"] for op in job["operators"]}
        rates = {}
        if self.last is not None:
            then, previous = self.last
            dt = max(1e-6, now - then)
            rates = {name: (rows[name] - previous.get(name, 0)) / dt for name in rows}
        self.last = (now, rows)
        parts = [f"{name} {rates.get(name, 0.0):,.0f} rows/s" for name in rows]
        sources = [op for op in job["operators"] if op["operator_type"] == "source"]
        bar = ""
        if sources and all(op.get("total_rows") is not None for op in sources):
            total = sum(op["total_rows"] for op in sources)
            done = sum(op["rows_out"] for op in sources)
            if total:
                bar = _bar(done / total) + " "
        return f"{job['state']:<9} {bar}" + " | ".join(parts)


# -- commands -------------------------------------------------------------------------------


def cmd_coordinator(args):
    from sabot.cluster.coordinator import ClusterCoordinator

    config = CoordinatorConfig(
        host=args.host, port=args.port, token=_token(args),
        heartbeat_interval_s=args.heartbeat_interval, heartbeat_timeout_s=args.heartbeat_timeout,
        slot_wait_timeout_s=args.slot_wait_timeout, refuse_oversized=not args.allow_oversized,
        check_imports=not args.no_import_check, allowed_function_modules=args.allow_functions,
        tls=_tls(args),
    )

    async def main():
        coordinator = ClusterCoordinator(config)
        await coordinator.start()
        print(f"sabot coordinator listening on {coordinator.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await coordinator.stop()

    _run_loop(main())
    return 0


def cmd_worker(args):
    from sabot.cluster.local import check_expected_package
    from sabot.cluster.worker import Worker

    try:
        check_expected_package()
    except RuntimeError as exc:
        return _fail(str(exc))

    async def main():
        worker = Worker(args.coordinator, num_slots=args.slots, cpu_cores_per_slot=args.cpu_per_slot,
                        memory_mb_per_slot=args.memory_per_slot, host=args.host, port=args.port,
                        token=_token(args), node_id=args.node_id, threads=args.threads, tls=_tls(args),
                        connect_timeout_s=args.connect_timeout)
        await worker.start()
        print(f"sabot worker {worker.node_id} at {worker.url} (pid {os.getpid()}) joined {args.coordinator}",
              flush=True)
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopped.set)
        closed = asyncio.ensure_future(worker.wait_closed())
        signalled = asyncio.ensure_future(stopped.wait())
        await asyncio.wait({closed, signalled}, return_when=asyncio.FIRST_COMPLETED)
        await worker.stop()
        if closed.done() and not signalled.done():
            print(f"sabot worker {worker.node_id}: {worker.closed_reason}; exiting", file=sys.stderr, flush=True)
            return 1
        return 0

    return _run_loop(main())


def cmd_cluster_start(args):
    from sabot.cluster.local import LocalCluster

    cluster = LocalCluster(workers=args.workers, slots_per_worker=args.slots, token=_token(args),
                           coordinator_config={"port": args.port}, tls=_tls(args))
    token_file = None
    stop = []
    # Ctrl-C and SIGTERM both ask for a clean stop; handled as flags, never as an exception
    # that could land between two statements and skip the cleanup
    previous = {sig: signal.signal(sig, lambda *_: stop.append(1)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with cluster:
            print(f"sabot local cluster: coordinator {cluster.url}, {args.workers} workers x {args.slots} slots "
                  f"(pids {cluster.worker_pids}); Ctrl-C stops all", flush=True)
            if not _token(args):  # the cluster made its own secret: hand it over in a private file
                import tempfile

                from sabot.cluster import protocol

                token_file = protocol.write_token_file(
                    os.path.join(tempfile.mkdtemp(prefix="sabot-"), "token"), cluster.token)
                print(f"its secret is in {token_file} (readable by you only): "
                      f"export SABOT_TOKEN_FILE={token_file} for 'sabot job ...'", flush=True)
            while not stop:
                time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if token_file is not None:
            import shutil

            shutil.rmtree(os.path.dirname(token_file), ignore_errors=True)
    print("sabot local cluster stopped", flush=True)
    return 0


def cmd_run(args):
    from sabot.cluster.local import LocalCluster
    from sabot.errors import JobFailed

    obj, path = load_target(args.target)
    job = to_job_graph(obj, args.parallelism)
    out = sys.stderr
    tty = out.isatty()
    with LocalCluster(workers=args.workers, slots_per_worker=args.slots,
                      python_path=[path] if path else ()) as cluster:
        print(f"running {job.job_name!r} on a local cluster: {args.workers} workers x {args.slots} slots "
              f"(coordinator {cluster.url})", file=out, flush=True)
        job_id = cluster.submit(job)
        progress = Progress()
        start = time.monotonic()
        last_print = 0.0
        while True:
            info = cluster.job(job_id)
            now = time.monotonic()
            if info["state"] in ("FINISHED", "FAILED", "CANCELED"):
                break
            if args.timeout and now - start > args.timeout:
                cluster.cancel(job_id)
                return _fail(f"job {job_id} did not finish within {args.timeout} s; canceled", 1)
            line = progress.line(info, now)
            if tty:
                print("\r" + line[:160].ljust(160), end="", file=out, flush=True)
            elif now - last_print >= 2.0:
                print(line, file=out, flush=True)
                last_print = now
            time.sleep(args.interval)
        if tty:
            print(file=out)
        elapsed = time.monotonic() - start
        print(f"job {job_id} {info['state']} in {elapsed:.2f} s", file=out, flush=True)
        if info["state"] != "FINISHED":
            failure = (info.get("failure") or {})
            print(failure.get("error") or info["state"], file=sys.stderr)
            if failure.get("traceback"):
                print(failure["traceback"], file=sys.stderr)
            return 1
        try:
            result = cluster.result(job_id)
        except JobFailed as exc:
            return _fail(str(exc), 1)
        for op in info["operators"]:
            print(f"  {op['name']:<24} parallelism {op['parallelism']:<3} rows {op['rows_processed']:>12,}",
                  file=out)
        for name, table in _tables(result):
            print(f"\n{name}: {table.num_rows} rows")
            print(format_table(table, args.limit))
        for name, summaries in result.summaries.items():
            if name not in result.tables and any(summaries):
                print(f"\n{name}: {json.dumps(summaries, default=str)}")
    return 0


def cmd_sql(args):
    """Run a SQL script: DDL, then its INSERT jobs (or a final SELECT / EXPLAIN)."""
    from sabot.sql import Session, SqlJob
    from sabot.sql.errors import SqlError

    if not args.file:
        return sql_client(args)
    with open(args.file, encoding="utf-8") as f:
        script = f.read()
    variables = {}
    for item in args.var or []:
        name, sep, value = item.partition("=")
        if not sep:
            return _fail(f"--var takes NAME=VALUE, got {item!r}")
        variables[name] = value
    session = Session(variables, {"parallelism.default": args.parallelism})
    try:
        results = session.execute(script)  # every statement is planned before anything runs
    except SqlError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 1
    jobs = []
    for r in results:
        if r is None:
            continue
        if isinstance(r, str):  # EXPLAIN
            print(r)
        elif isinstance(r, SqlJob):
            jobs.append(r)
        else:  # a SELECT: its rows are collected
            jobs.append(r.collect(name="result"))
    for job in jobs:
        name = getattr(job, "name", "select")
        if args.coordinator:
            graph = job.to_job_graph(default_parallelism=args.parallelism, shippable=True) \
                if isinstance(job, SqlJob) else job.to_job_graph(name, default_parallelism=args.parallelism,
                                                                 shippable=True)
            job_id = _client(args).submit(graph.to_dict())
            print(f"{name}: submitted as job {job_id}")
            continue
        start = time.monotonic()
        if isinstance(job, SqlJob):
            result = job.run(default_parallelism=args.parallelism, timeout=args.timeout)
        else:
            result = job.run(default_parallelism=args.parallelism, timeout=args.timeout, job_name=name)
        print(f"{name}: finished in {time.monotonic() - start:.2f} s", file=sys.stderr)
        for table_name, table in _tables(result):
            print(f"\n{table_name}: {table.num_rows} rows")
            print(format_table(table, args.limit))
    return 0


def _split_statements(buffer):
    """Complete statements (ended by ';' outside quotes) and the rest of ``buffer``."""
    out, start, quote = [], 0, None
    for i, ch in enumerate(buffer):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'`\"":
            quote = ch
        elif ch == ";":
            if buffer[start:i].strip():
                out.append(buffer[start:i].strip())
            start = i + 1
    return out, buffer[start:]


def sql_client(args, stdin=None, stdout=None):
    """The interactive SQL client: statements end with ';', history in ~/.sabot_sql_history.

    DDL and SET change the session; INSERT runs the job here (or submits it with
    --coordinator); SELECT shows its rows as they arrive (Ctrl-C stops an unbounded one);
    EXPLAIN prints the job graph. ``quit`` or end of input leaves."""
    from sabot.sql import Session, SqlJob
    from sabot.sql.errors import SqlError

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    tty = stdin.isatty()
    history = os.environ.get("SABOT_SQL_HISTORY", os.path.expanduser("~/.sabot_sql_history"))
    if tty:
        import readline

        try:
            readline.read_history_file(history)
        except OSError:
            pass
        print(f"Sabot SQL {__version__}: statements end with ';', 'quit' leaves; history in {history}", file=stdout)
    session = Session(dict(v.split("=", 1) for v in (args.var or [])), {"parallelism.default": args.parallelism})
    buffer = ""
    while True:
        try:
            line = input("sabot> " if not buffer.strip() else "     > ") if tty else stdin.readline()
        except EOFError:
            line = ""
        except KeyboardInterrupt:
            buffer = ""
            print(file=stdout)
            continue
        if not tty and line == "":
            break
        if tty and line == "" and not buffer:
            continue
        if not buffer.strip() and line.strip().rstrip(";").lower() in ("quit", "exit"):
            break
        buffer += line + ("\n" if tty else "")
        statements, buffer = _split_statements(buffer)
        for text in statements:
            try:
                results = session.execute(text)
            except SqlError as exc:
                print(f"error: {exc}", file=stdout)
                continue
            for r in results:
                if r is None:
                    print("ok", file=stdout)
                elif isinstance(r, str):
                    print(r, file=stdout)
                elif isinstance(r, SqlJob):
                    if args.coordinator:
                        job_id = _client(args).submit(r.to_job_graph(shippable=True).to_dict())
                        print(f"submitted as job {job_id}", file=stdout)
                    else:
                        result = r.run(timeout=args.timeout)
                        for name, table in _tables(result):
                            print(f"{name}: {table.num_rows} rows", file=stdout)
                            print(format_table(table, args.limit), file=stdout)
                        print(f"{r.name}: finished", file=stdout)
                else:
                    _show_select(r, args, stdout)
        stdout.flush()
    if tty:
        import readline

        try:
            readline.write_history_file(history)
        except OSError:
            pass
    return 0


def _show_select(stream, args, stdout):
    """Print a SELECT's rows as batches arrive, then the count (Ctrl-C stops it).

    An updating result (a GROUP BY or Top-N without a window: a changelog, rows with the
    ``$op`` column) is shown as the table it materialises (each +I/+U row added, each -U/-D
    row withdrawn): redrawn in place on a terminal as the result changes, printed once at
    the end otherwise, with the number of changelog rows seen."""
    import pyarrow as pa

    from sabot.runtime.changelog import OP, is_changelog, signs

    updating = is_changelog(stream.schema)
    shown = pa.schema([f for f in stream.schema if f.name != OP]) if updating else stream.schema
    seen = [0]
    rows = {}  # a changelog's rows: row values -> how many times it is in the table
    tty = stdout.isatty()
    last_draw = [0.0]

    def draw(final=False):
        present = [dict(zip(shown.names, k)) for k in sorted(rows, key=_sort_key) for _ in range(rows[k])]
        table = pa.Table.from_pylist(present, schema=shown) if present else shown.empty_table()
        if tty and not final:
            stdout.write("\x1b[2J\x1b[H")  # clear the screen, cursor home
        print(format_table(table, args.limit), file=stdout)
        print(f"({table.num_rows} rows, {seen[0]} updates{'' if final else ', running'})", file=stdout, flush=True)

    def show(batch):
        if batch.num_rows == 0:
            return
        seen[0] += batch.num_rows
        if updating:
            values = pa.Table.from_batches([batch]).drop_columns([OP])
            for sign, row in zip(signs(batch), values.to_pylist()):
                key = tuple(row.values())
                rows[key] = rows.get(key, 0) + int(sign)
                if rows[key] == 0:
                    del rows[key]
            if tty and time.monotonic() - last_draw[0] > 0.2:
                last_draw[0] = time.monotonic()
                draw()
            return
        table = pa.Table.from_batches([batch])
        room = max(args.limit - (seen[0] - batch.num_rows), 0)
        if room:
            print(format_table(table.slice(0, room), room), file=stdout, flush=True)

    try:
        stream.sink(show).run(default_parallelism=args.parallelism, timeout=args.timeout)
    except KeyboardInterrupt:
        print("(stopped)", file=stdout)
    if updating:
        draw(final=True)
    else:
        print(f"({seen[0]} rows)", file=stdout, flush=True)


def _tables(result):
    """``(name, table)`` of each collect sink; a changelog (an updating result) as the table it
    materialises (``JobResult.table``)."""
    return [(name, result.table(name)) for name in result.tables]


def _sort_key(key):
    return tuple((v is None, v) for v in key)


def _client(args):
    from sabot.cluster.client import SabotClient

    return SabotClient(args.coordinator, token=_token(args), tls=_tls(args))


def cmd_job_submit(args):
    source = args.job
    if source.lstrip().startswith("{"):
        body = json.loads(source)
    elif source.endswith(".json"):
        with open(source) as f:
            body = json.load(f)
    else:
        obj, _ = load_target(source)
        body = to_job_graph(obj, args.parallelism)  # submit() uploads its in-memory tables first
    job_id = _client(args).submit(body)
    print(job_id)
    return 0


def cmd_job_list(args):
    jobs = _client(args).jobs()
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    print(f"{'JOB ID':<40} {'NAME':<24} {'STATE':<18} {'TASKS':>5} {'SECONDS':>9}")
    for job in jobs:
        print(f"{job['job_id']:<40} {job['job_name']:<24} {job['state']:<18} {job['num_tasks']:>5} "
              f"{job['duration_seconds']:>9.2f}")
    return 0


def cmd_job_status(args):
    info = _client(args).job(args.job_id)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"job {info['job_id']} ({info['job_name']}): {info['state']}, {info['duration_seconds']:.2f} s")
    if info.get("failure"):
        print(f"failure: {info['failure']['error']}")
    for op in info["operators"]:
        print(f"  {op['name']:<24} p={op['parallelism']:<3} rows {op['rows_processed']:>12,} "
              f"{op['rows_per_second']:>12,.0f} rows/s  {op['task_states']}")
    return 0


def cmd_job_cancel(args):
    answer = _client(args).cancel(args.job_id)
    print(f"job {answer['job_id']}: {answer['state']}")
    return 0


# -- argument parsing -----------------------------------------------------------------------


class _TokenOnCommandLine(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        print("sabot: warning: --token is visible to every local user in /proc/<pid>/cmdline; "
              "use --token-file or $SABOT_TOKEN", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _tls(args):
    """A TlsConfig from --tls-cert/--tls-key/--tls-ca[/--tls-mutual], or None (then $SABOT_TLS_*)."""
    from sabot.cluster.tls import TlsConfig

    given = [getattr(args, n, None) for n in ("tls_cert", "tls_key", "tls_ca")]
    if not any(given):
        return None
    if not all(given):
        raise ValueError("TLS needs --tls-cert, --tls-key and --tls-ca together")
    return TlsConfig(*given, mutual=bool(getattr(args, "tls_mutual", False)))


def _token(args):
    """The cluster secret from --token, --token-file, $SABOT_TOKEN or $SABOT_TOKEN_FILE (None: none)."""
    from sabot.cluster import protocol

    return protocol.resolve_token(getattr(args, "token", None), getattr(args, "token_file", None))


def build_parser():
    parser = argparse.ArgumentParser(prog="sabot", description="Sabot: stream processing over Apache Arrow.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"sabot {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def tls_args(p):
        p.add_argument("--tls-cert", metavar="PEM", help="this process's certificate (default $SABOT_TLS_CERT)")
        p.add_argument("--tls-key", metavar="PEM", help="its private key (default $SABOT_TLS_KEY)")
        p.add_argument("--tls-ca", metavar="PEM", help="the CA every cluster member's certificate is signed by "
                                                       "(default $SABOT_TLS_CA)")
        p.add_argument("--tls-mutual", action="store_true",
                       help="servers require client certificates too (default $SABOT_TLS_MUTUAL)")

    def token_arg(p):
        p.add_argument("--token-file", metavar="PATH",
                       help="file holding the cluster secret, readable by you only (default $SABOT_TOKEN, "
                            "else the file $SABOT_TOKEN_FILE); required to bind anything but 127.0.0.1")
        p.add_argument("--token", action=_TokenOnCommandLine,
                       help="the cluster secret itself (discouraged: every local user can read a command line)")

    p = sub.add_parser("coordinator", help="run a coordinator (JobManager) in the foreground",
                       description="Run a coordinator with the HTTP API on uvloop until Ctrl-C.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8081, help="port (default 8081; 0 = any free port)")
    token_arg(p)
    tls_args(p)
    defaults = CoordinatorConfig()
    p.add_argument("--heartbeat-interval", type=float, default=defaults.heartbeat_interval_s,
                   help="seconds between worker heartbeats")
    p.add_argument("--heartbeat-timeout", type=float, default=defaults.heartbeat_timeout_s,
                   help="a silent worker (stopped, partitioned) is declared lost after this many seconds; a "
                        "killed one at once")
    p.add_argument("--slot-wait-timeout", type=float, default=defaults.slot_wait_timeout_s,
                   help="seconds a job may wait for slots")
    p.add_argument("--allow-oversized", action="store_true",
                   help="let jobs larger than the registered cluster wait for workers instead of refusing them")
    p.add_argument("--no-import-check", action="store_true",
                   help="do not look for operator functions' packages at submit (user code only on the workers)")
    p.add_argument("--allow-functions", metavar="MODULE", nargs="+",
                   help="module prefixes user functions may come from (default: any package outside the "
                        "standard library, pyarrow and sabot)")
    p.set_defaults(func=cmd_coordinator)

    p = sub.add_parser("worker", help="run a worker (TaskManager) that joins a coordinator",
                       description="Run a worker that offers task slots to a coordinator and runs its tasks. "
                                   "It exits when the coordinator goes away.")
    p.add_argument("--coordinator", required=True, help="coordinator URL, e.g. http://127.0.0.1:8081")
    p.add_argument("--slots", type=int, default=1, help="task slots offered (default 1)")
    p.add_argument("--cpu-per-slot", type=float, default=1.0, help="cpu cores per slot (default 1.0)")
    p.add_argument("--memory-per-slot", type=int, default=1024, help="memory per slot in MB (default 1024)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="control port (default: any free port)")
    p.add_argument("--node-id", default=None, help="node id (default worker-<pid>-<port>)")
    p.add_argument("--threads", type=int, default=None, help="operator thread pool size")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to keep trying the coordinator")
    token_arg(p)
    tls_args(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("cluster", help="local clusters", description="Manage a local cluster.")
    csub = p.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    q = csub.add_parser("start", help="run a coordinator and N workers here, in the foreground",
                        description="Start a coordinator and N worker processes on 127.0.0.1; Ctrl-C stops all.")
    q.add_argument("--workers", type=int, default=2, help="number of workers (default 2)")
    q.add_argument("--slots", type=int, default=2, help="slots per worker (default 2)")
    q.add_argument("--port", type=int, default=8081, help="coordinator port (default 8081; 0 = any)")
    token_arg(q)
    tls_args(q)
    q.set_defaults(func=cmd_cluster_start)

    p = sub.add_parser("run", help="run a Stream or JobGraph on a fresh local cluster",
                       description="Load FILE_OR_MODULE[:ATTR] (a Stream ending in a sink, a JobGraph, or a "
                                   "function returning one), run it on a new local cluster with live progress, "
                                   "print the result.")
    p.add_argument("target", metavar="FILE_OR_MODULE[:ATTR]")
    p.add_argument("--workers", type=int, default=2, help="number of workers (default 2)")
    p.add_argument("--slots", type=int, default=2, help="slots per worker (default 2)")
    p.add_argument("--parallelism", type=int, default=None, help="default parallelism for a Stream")
    p.add_argument("--timeout", type=float, default=None, help="cancel the job after this many seconds")
    p.add_argument("--limit", type=int, default=20, help="rows of each result table to print")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between progress updates")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sql", help="run a Flink SQL script (here, or submitted to a coordinator)",
                       description="Run a SQL script: CREATE TABLE/VIEW/FUNCTION, SET, then each INSERT INTO as "
                                   "a job (a final SELECT is collected and printed; EXPLAIN prints the job graph). "
                                   "Without --coordinator the jobs run in this process.")
    p.add_argument("-f", "--file", metavar="SCRIPT.sql", help="the script")
    p.add_argument("--var", action="append", metavar="NAME=VALUE", help="replace ${NAME} in the script")
    p.add_argument("--coordinator", default=None, help="submit the jobs to this coordinator instead of running here")
    p.add_argument("--parallelism", type=int, default=1, help="default parallelism (default 1)")
    p.add_argument("--timeout", type=float, default=None, help="seconds a job may run here")
    p.add_argument("--limit", type=int, default=20, help="rows of each result table to print")
    token_arg(p)
    tls_args(p)
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("job", help="submit and inspect jobs on a running coordinator",
                       description="Submit, list, inspect and cancel jobs over the coordinator's HTTP API.")
    jsub = p.add_subparsers(dest="job_command", metavar="ACTION", required=True)

    def common(q):
        q.add_argument("--coordinator", default=os.environ.get("SABOT_COORDINATOR", DEFAULT_COORDINATOR),
                       help="coordinator URL (default $SABOT_COORDINATOR or http://127.0.0.1:8081)")
        token_arg(q)
        tls_args(q)

    q = jsub.add_parser("submit", help="submit a job; prints its id",
                        description="Submit FILE_OR_MODULE[:ATTR], a JobGraph JSON file, or inline JSON.")
    q.add_argument("job", metavar="FILE|JSON")
    q.add_argument("--parallelism", type=int, default=None, help="default parallelism for a Stream")
    common(q)
    q.set_defaults(func=cmd_job_submit)
    q = jsub.add_parser("list", help="list jobs", description="List every job the coordinator knows.")
    q.add_argument("--json", action="store_true", help="print JSON")
    common(q)
    q.set_defaults(func=cmd_job_list)
    q = jsub.add_parser("status", help="show one job", description="Show a job's state, operators and rates.")
    q.add_argument("job_id")
    q.add_argument("--json", action="store_true", help="print the full JSON document")
    common(q)
    q.set_defaults(func=cmd_job_status)
    q = jsub.add_parser("cancel", help="cancel a job", description="Cancel a job; its slots are freed.")
    q.add_argument("job_id")
    common(q)
    q.set_defaults(func=cmd_job_cancel)
    return parser


def main(argv=None):
    """Entry point of the ``sabot`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, quiet=args.command in ("run", "job", "sql"))
    if not args.verbose:
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    from sabot.cluster.client import ApiError
    from sabot.errors import SabotError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ApiError, SabotError, ConnectionError, FileNotFoundError, ImportError, ValueError,
            AttributeError, TypeError, TimeoutError) as exc:
        if args.verbose:
            raise
        return _fail(str(exc), 1)


if __name__ == "__main__":
    sys.exit(main())
