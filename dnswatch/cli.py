"""Command line: parses options, calls the library, formats output. No capture or decoding logic here."""
from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
from typing import List, Optional, Sequence, Tuple

import click

from dnswatch import __version__
from dnswatch.correlate import DEFAULT_TIMEOUT
from dnswatch.output import NeverWaitingOutput, event_line, safe_message, safe_text, write_rows
from dnswatch.pipeline import Pipeline, Summary
from dnswatch.schema import TABLES, describe
from dnswatch.search import SearchError, SearchFilters, build_search
from dnswatch.sources.pcap import CaptureFormatError, PcapReader, file_size
from dnswatch.stop import StopSignals
from dnswatch.store import Store, StoreError, default_db_path, open_readonly


class _Number(click.ParamType):
    """An int or float option within bounds. Out of range (or not a number) is one line and exit 1, never a
    traceback: too large a --pid overflows SQLite's integers, and the kernel filter takes only so much."""

    def __init__(self, kind: type, low, high, fix: str):
        self.kind, self.low, self.high, self.fix = kind, low, high, fix
        self.name = "integer" if kind is int else "number"
        self.name_text = "an integer" if kind is int else "a number"

    def convert(self, value, param, ctx):
        opt = param.opts[0] if param is not None and param.opts else "value"
        if isinstance(value, self.kind) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = self.kind(str(value).strip())
            except ValueError:
                raise click.ClickException(f"{opt} {safe_text(str(value))}: not {self.name_text}; {self.fix}")
        # a NaN fails both comparisons; inf fails the upper bound
        if not (self.low <= number <= self.high):
            raise click.ClickException(f"{opt} {safe_text(str(value))}: out of range; {self.fix}")
        return number


PORT = _Number(int, 1, 65535, "a port is a whole number from 1 to 65535")
PID = _Number(int, 0, 2**31 - 1, "a process id is a whole number from 0 to 2147483647")
SECONDS = _Number(float, 1e-3, 1e9, "give seconds as a number from 0.001 to 1e9")
COUNT = _Number(int, 1, 2**62, "give a whole number from 1 to 2**62")
LIMIT = _Number(int, 0, 2**62, "give a whole number of rows from 0 (no limit) to 2**62")


def db_option(f):
    return click.option(
        "--db", "db_path", default=None, metavar="PATH",
        help="SQLite log file (default: $DNSWATCH_DB, else ./dnswatch.db).",
    )(f)


def port_option(f):
    return click.option(
        "--port", "ports", type=PORT, multiple=True, metavar="PORT",
        help="DNS port to decode (repeatable; default 53).",
    )(f)


def format_options(f):
    f = click.option("--table", "fmt", flag_value="table", help="Output as a table.")(f)
    f = click.option("--csv", "fmt", flag_value="csv", help="Output as CSV.")(f)
    f = click.option("--nl", "fmt", flag_value="nl", help="Output newline-delimited JSON.")(f)
    f = click.option("--json", "fmt", flag_value="json", default=True, help="Output a JSON array (default).")(f)
    return f


class _EscapingGroup(click.Group):
    """Every error reaches the terminal escaped: its file names and values are the user's, or whoever named the
    file (an ESC sequence or a CR in a file name must not recolour or rewrite the screen)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            exc.message = safe_message(exc.message)
            raise


@click.group(cls=_EscapingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dnswatch")
def cli() -> None:
    """Who resolved what, when, and what did they get.

    Live DNS capture with eBPF (watch), offline replay of pcap files (replay), and search and SQL over
    the recorded log (search, query, schema).
    """


# -- replay --------------------------------------------------------------------------------------

@cli.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@db_option
@port_option
@click.option("--timeout", type=SECONDS, default=DEFAULT_TIMEOUT, show_default=True,
              help="Seconds (capture time) a query waits for its response before it is unanswered.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def replay(files: Sequence[str], db_path: Optional[str], ports: Sequence[int], timeout: float,
           progress: Optional[bool], as_json: bool) -> None:
    """Decode pcap/pcapng captures (.gz too; - for stdin) into the log.

    \b
    Example:
      dnswatch replay capture.pcap other.pcapng.gz --db dns.db
    """
    db_path = db_path or default_db_path()
    ports = tuple(ports) or (53,)
    if progress is None:
        progress = sys.stderr.isatty()
    failures = 0
    summaries = []
    with StopSignals() as stop:  # Ctrl-C, SIGTERM, SIGHUP: stop between two chunks, record, summarise
        try:
            store = Store(db_path, live_columns=False, bulk=True)
        except StoreError as exc:
            raise click.ClickException(str(exc))
        _notices(store)
        try:
            for path in files:
                if stop.requested:
                    break
                try:
                    summary, error = _replay_one(store, path, ports, timeout, progress, stop)
                except CaptureFormatError as exc:  # not a capture at all: nothing was recorded
                    failures += 1
                    click.echo(f"Error: {safe_text(exc)}", err=True)
                    continue
                summaries.append((path, summary))
                for warning in summary.warnings:
                    click.echo(f"Warning: {safe_text(warning)}", err=True)
                if as_json:
                    click.echo(json.dumps({"file": path, **_summary_dict(summary)}))
                else:
                    click.echo(_summary_text(path, summary))
                if isinstance(error, CaptureFormatError):
                    failures += 1
                    click.echo(f"Error: {safe_text(error)}", err=True)
                elif isinstance(error, StoreError):
                    raise click.ClickException(str(error))
                elif error is not None:
                    raise error  # a bug: its traceback, now that the capture says 'failed' and the summary is out
        finally:
            try:
                store.close()
            except StoreError:
                pass
    if stop.requested:
        raise click.ClickException(
            f"interrupted by {stop.name}: {len(summaries)} of {len(files)} files replayed, the last one in part; "
            "what was read is stored (captures.status = 'interrupted')")
    if failures:
        raise click.ClickException(f"{failures} of {len(files)} files could not be read (see above)")


def _notices(store: Store) -> None:
    for notice in store.notices:
        click.echo(f"Warning: {safe_text(notice)}", err=True)


def _replay_one(store: Store, path: str, ports: Sequence[int], timeout: float, progress: bool,
                stop: StopSignals) -> Tuple[Summary, Optional[BaseException]]:
    """Replay one file. Every way it ends records a status ('complete', 'interrupted', 'failed') and returns
    the summary, with the error that ended it, if any. Raises CaptureFormatError only before it started."""
    reader = PcapReader(path)
    pipeline = Pipeline(store, "pcap", path, ports, timeout, options={"format": reader.format})
    size = file_size(path)
    status, error = "complete", None
    try:
        with contextlib.ExitStack() as stack:
            advance = None
            if progress and size:
                bar = stack.enter_context(click.progressbar(length=size, label=safe_text(path), file=sys.stderr))
                done = [0]

                def advance() -> None:
                    now = reader.position()
                    bar.update(now - done[0])
                    done[0] = now
            if not pipeline.feed_file(reader.frames(), lambda: stop.requested, advance):
                status = "interrupted"
    except Exception as exc:  # noqa: BLE001 - recorded as 'failed' with its reason, then the caller reports it
        status, error = "failed", exc
        pipeline.summary.error = f"{type(exc).__name__}: {exc}"
    pipeline.summary.warnings.extend(reader.warnings)
    if reader.dropped:  # packets of pcapng interfaces beyond the interface table's bound
        pipeline.source_losses["memory_bounds"] = reader.dropped
    if reader.damaged and status == "complete":
        status = "damaged"  # read to the end of what could be read: the warnings say where it stopped
    unknown = pipeline.decoder.unknown_linktypes()
    if unknown:
        pipeline.summary.warnings.append(
            f"{path}: frames with unsupported link types {sorted(unknown)} were skipped; dnswatch reads Ethernet, "
            "Linux cooked v1/v2, raw IP and BSD loopback"
        )
        if status == "complete" and sum(unknown.values()) == pipeline.summary.frames:
            status, error = "failed", CaptureFormatError(pipeline.summary.warnings[-1])
            pipeline.summary.error = str(error)
    try:
        summary = pipeline.finish(status)
    except StoreError as exc:  # the log cannot take the status: the summary still says what was read
        summary, error = pipeline.counters(), error or exc
        summary.status = status
    finally:
        reader.close()
    return summary, error


def _summary_dict(s: Summary) -> dict:
    return {
        "frames": s.frames, "dns_messages": s.dns_messages, "queries": s.queries, "responses": s.responses,
        "malformed": s.malformed, "dropped": s.dropped, "losses": s.losses, "duplicates": s.duplicates,
        "retries": s.retries, "repeated_responses": s.repeated_responses, "unanswered": s.unanswered,
        "response_only": s.response_only, "rows": s.rows, "seconds": round(s.seconds, 3),
        "frames_per_second": round(s.rate), "malformed_reasons": s.malformed_reasons, "warnings": s.warnings,
        "status": s.status,
    }


def losses_text(losses: dict) -> str:
    """'kernel perf buffer 3, decode 0, ...': every stage, so a reader sees where nothing was lost too."""
    return ", ".join(f"{stage.replace('_', ' ')} {n:,}" for stage, n in losses.items())


def _summary_text(path: str, s: Summary) -> str:
    text = (
        f"{safe_text(path)}: {s.frames:,} frames, {s.dns_messages:,} DNS messages "
        f"({s.queries:,} queries, {s.responses:,} responses, {s.malformed:,} malformed), "
        f"{s.rows:,} rows, {s.unanswered:,} unanswered, {s.response_only:,} responses without query"
    )
    if s.dropped:
        text += f", {s.dropped:,} lost ({losses_text(s.losses)})"
    text += f" in {s.seconds:.2f}s ({s.rate:,.0f} frames/s)"
    return text if s.status == "complete" else f"{text}; {s.status}"


# -- query / search / schema ---------------------------------------------------------------------

def _open(db_path: Optional[str], attach=()):
    try:
        db = open_readonly(db_path or default_db_path(), attach)
    except StoreError as exc:
        raise click.ClickException(str(exc))
    for notice in db.conn.notices:
        click.echo(f"Note: {safe_text(notice)}", err=True)
    return db


def _sql_error(db, exc: sqlite3.Error) -> str:
    text = str(exc)
    refused = getattr(db.conn, "refused", None)
    if refused and ("not authorized" in text or "authorization denied" in text):
        return f"query only reads the log, and refuses {refused}"
    if "too many attached" in text:
        return "query only reads the log, and refuses ATTACH and VACUUM; --attach ALIAS PATH reads another log"
    if "readonly" in text:
        return f"query only reads the log ({text}); replay and watch write it"
    return f"SQL error: {text}"


def _run_sql(db, sql: str, params, fmt: str) -> None:
    try:
        cursor = db.conn.execute(sql, params)
    except sqlite3.Error as exc:
        raise click.ClickException(_sql_error(db, exc))
    columns = [d[0] for d in cursor.description or ()]
    rows = (dict(zip(columns, r)) for r in cursor)
    out = sys.stdout
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (tests, embedding): written as it comes
        fd = None
    if fd is not None:  # a stalled reader of our output must not stall the log's WAL (see NeverWaitingOutput)
        out.flush()
        out = NeverWaitingOutput(fd, getattr(sys.stdout, "encoding", None) or "utf-8")
    try:
        write_rows(rows, fmt, out, columns)
    except sqlite3.Error as exc:
        raise click.ClickException(_sql_error(db, exc))
    finally:
        cursor.close()  # the read transaction ends here, before a slow reader gets the spool
        if fd is not None:
            try:
                out.close()
            except BrokenPipeError:  # the reader went away (| head): nothing more to say
                pass


@cli.command()
@click.argument("sql")
@db_option
@click.option("-p", "--param", "params", type=(str, str), multiple=True, metavar="NAME VALUE",
              help="Named parameter for :NAME in the SQL (repeatable).")
@click.option("--attach", type=(str, click.Path(dir_okay=False)), multiple=True, metavar="ALIAS PATH",
              help="Attach another log read-only as ALIAS (ALIAS.queries), e.g. another node's (repeatable).")
@format_options
def query(sql: str, db_path: Optional[str], params, attach, fmt: str) -> None:
    """Run SQL against the log (read-only).

    Only reading statements run: ATTACH, VACUUM, pragmas that set something and extension loading are refused.
    In JSON, blobs are {"$base64": true, "encoded": ...} and infinite numbers the strings "Infinity" and
    "-Infinity" (JSON has no infinity).

    \b
    Examples:
      dnswatch query "select qname, count(*) n from queries group by 1 order by n desc limit 10"
      dnswatch query "select 'a' node, * from queries union all select 'b', * from b.queries" \\
          --db node-a.db --attach b node-b.db
    """
    _run_sql(_open(db_path, attach), sql, dict(params), fmt)


@cli.command()
@click.argument("name", required=False)
@db_option
@click.option("--type", "types", multiple=True, help="Query type (A, AAAA, TXT...; repeatable).")
@click.option("--rcode", "rcodes", multiple=True, help="Response code (NXDOMAIN, SERVFAIL...; repeatable).")
@click.option("--status", type=click.Choice(["answered", "unanswered", "response_only", "query_only"]))
@click.option("--src", help="Client address.")
@click.option("--answer", help="Rows whose answers contain this value (an address, a CNAME target...).")
@click.option("--pid", "pids", type=PID, multiple=True, help="Sending process id (repeatable).")
@click.option("--comm", "comms", multiple=True, help="Sending command name (repeatable).")
@click.option("--pod", "pods", multiple=True, help="Kubernetes pod name (repeatable; a single glob works too).")
@click.option("--pod-namespace", "pod_namespaces", multiple=True, help="Kubernetes namespace (repeatable).")
@click.option("--container", "containers", multiple=True, help="Container name or id prefix (repeatable).")
@click.option("--since", help="From this time: 10m, 2h, 1d (ago), 2026-11-01, 2026-11-01T14:30, Unix seconds.")
@click.option("--until", help="Up to this time (same forms as --since).")
@click.option("--limit", type=LIMIT, default=100, show_default=True, help="At most this many rows (0: all).")
@click.option("--all-columns", is_flag=True, help="Every column of the queries table.")
@click.option("--lookups", "lookups", is_flag=True,
              help="Lookups (resolver calls: search-path candidates, A/AAAA, retries) instead of queries; NAME matches "
                   "any candidate. See `dnswatch schema`, table lookups.")
@click.option("--min-wasted", type=click.IntRange(0), metavar="N",
              help="With --lookups: only lookups that wasted at least N queries on search-path expansions.")
@format_options
def search(name: Optional[str], db_path: Optional[str], types, rcodes, status, src, answer, pids, comms, pods,
           pod_namespaces, containers, since, until, limit: int, all_columns: bool, lookups: bool,
           min_wasted: Optional[int], fmt: str) -> None:
    """Find queries by name and other fields, newest first.

    NAME matches as a case-insensitive substring (example.com matches www.example.com), or as a glob
    when it has * ? or [ (*.example.com).

    \b
    Example:
      dnswatch search example.com --type AAAA --since 2026-11-01
      dnswatch search --lookups --pod-namespace shop --min-wasted 4
    """
    if lookups:
        from dnswatch.lookups import build_lookup_search
        from dnswatch.schema import LOOKUP_COLUMNS

        if types or status or answer:
            raise click.UsageError("--type, --status and --answer select queries; with --lookups use NAME, --rcode, "
                                   "--src, --pid, --comm, --pod..., --since/--until, --min-wasted")
        filters = SearchFilters(name=name, rcodes=rcodes, src=src, pids=pids, comms=comms, pods=pods,
                                pod_namespaces=pod_namespaces, containers=containers, since=since, until=until,
                                limit=limit, columns=["ts_utc"] + LOOKUP_COLUMNS if all_columns else [])
        try:
            sql, params = build_lookup_search(filters, min_wasted)
        except SearchError as exc:
            raise click.ClickException(str(exc))
        _run_sql(_open(db_path), sql, params, fmt)
        return
    if min_wasted is not None:
        raise click.UsageError("--min-wasted goes with --lookups")
    filters = SearchFilters(name=name, types=types, rcodes=rcodes, src=src, pids=pids, comms=comms, pods=pods,
                            pod_namespaces=pod_namespaces, containers=containers, answer=answer, status=status,
                            since=since, until=until, limit=limit,
                            columns=["id", "ts_utc"] + [c.name for c in TABLES[0].columns if c.name != "id"]
                            if all_columns else [])
    try:
        sql, params = build_search(filters)
    except SearchError as exc:
        raise click.ClickException(str(exc))
    _run_sql(_open(db_path), sql, params, fmt)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
@click.option("--sql", "as_sql", is_flag=True, help="As the CREATE statements.")
@click.option("--json-lines", "json_lines", is_flag=True,
              help="The JSON Schema of `watch --json` lines (versioned) instead.")
@click.option("--ecs", "as_ecs", is_flag=True,
              help="How `watch --json-format ecs` maps columns to Elastic Common Schema fields instead.")
def schema(as_json: bool, as_sql: bool, json_lines: bool, as_ecs: bool) -> None:
    """Every table and column of the log, with its meaning."""
    from dnswatch.jsonlines import ECS_MAPPING, ECS_VERSION, json_lines_schema
    from dnswatch.schema import create_sql

    if json_lines:
        click.echo(json.dumps(json_lines_schema(), indent=2))
        return
    if as_ecs:
        if as_json:
            click.echo(json.dumps({"ecs_version": ECS_VERSION,
                                   "fields": [{"field": f, "from": src} for f, src in ECS_MAPPING]}, indent=2))
            return
        click.echo(f"watch --json-format ecs: Elastic Common Schema {ECS_VERSION} fields and where they come from")
        width = max(len(f) for f, _ in ECS_MAPPING)
        for field, source in ECS_MAPPING:
            click.echo(f"  {field:<{width}}  {source}")
        return
    if as_json:
        click.echo(json.dumps(describe(), indent=2))
        return
    if as_sql:
        for table in TABLES:
            for statement in create_sql(table):
                click.echo(statement + ";")
        return
    for table in TABLES:
        click.echo(click.style(table.name, bold=True) + f": {table.doc}")
        width = max(len(c.name) for c in table.columns)
        for c in table.columns:
            click.echo(f"  {c.name:<{width}}  {c.type.split()[0]:<7}  {c.doc}")
        click.echo()


# -- live ----------------------------------------------------------------------------------------

@cli.command()
@click.option("-i", "--interface", "interfaces", multiple=True, metavar="IF",
              help="Interface to watch (repeatable; default: every interface).")
@port_option
@click.option("--responses", is_flag=True, help="Also capture responses: rcode, answers, latency.")
@click.option("--netns", "netns_specs", multiple=True, metavar="NS",
              help="Capture in this network namespace: /var/run/netns/NAME, /proc/PID/ns/net, a name from "
                   "`ip netns`, or a pid (repeatable).")
@click.option("--all-netns", is_flag=True,
              help="Capture in every network namespace of the host (every pod on a node), picking up new ones.")
@db_option
@click.option("--no-db", is_flag=True, help="Do not store anything; only print.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON lines on stdout, one per query or timeout (schema: dnswatch schema --json-lines).")
@click.option("--json-format", type=click.Choice(["native", "ecs"]), default=None,
              help="JSON line format: dnswatch's own (native, the default) or Elastic Common Schema (ecs); "
                   "implies --json.")
@click.option("--metrics", "metrics_listen", metavar="HOST:PORT",
              help="Serve Prometheus metrics on http://HOST:PORT/metrics (127.0.0.1:9553, [::1]:9553, :9553 for "
                   "every address).")
@click.option("--metrics-max-series", type=_Number(int, 1, 100_000, "give a whole number from 1 to 100000"),
              default=200, show_default=True,
              metavar="N", help="At most N label sets (pod/container or process) in the metrics; the rest are "
                                "counted under 'other'.")
@click.option("--metrics-server-label", is_flag=True, help="Add the resolver's address as a 'server' label.")
@click.option("--duration", type=SECONDS, metavar="SECONDS", help="Stop after this many seconds.")
@click.option("--count", type=COUNT, metavar="N", help="Stop after N queries shown.")
@click.option("--pid", "pids", type=PID, multiple=True, help="Only this process id (repeatable).")
@click.option("--comm", "comms", multiple=True, help="Only this command name (repeatable).")
@click.option("--name", "names", multiple=True, help="Only names containing this (or matching this glob).")
@click.option("--type", "types", multiple=True, help="Only this query type (repeatable).")
@click.option("--pod", "pods", multiple=True, help="Only this Kubernetes pod (repeatable).")
@click.option("--pod-namespace", "pod_namespaces", multiple=True, help="Only this Kubernetes namespace (repeatable).")
@click.option("--container", "containers", multiple=True, help="Only this container name or id prefix (repeatable).")
@click.option("--timeout", type=SECONDS, default=DEFAULT_TIMEOUT, show_default=True,
              help="Seconds a query waits for its response (with --responses).")
@click.option("--k8s-log-dir", default="/var/log", show_default=True, metavar="DIR",
              help="Where the kubelet's pods/ and containers/ log folders are (pod and container names).")
@click.option("--quiet", "-q", is_flag=True, help="Print no per-query lines (still stores them).")
@click.option("--debug", is_flag=True, help="Show the BPF compiler/verifier output on failure.")
@click.option("--heartbeat", "heartbeat_path", envvar="DNSWATCH_HEARTBEAT", metavar="FILE",
              help="Touch FILE every second while capturing, for `dnswatch health` (default: $DNSWATCH_HEARTBEAT).")
def watch(interfaces, ports, responses, netns_specs, all_netns, db_path, no_db, as_json, json_format,
          metrics_listen, metrics_max_series, metrics_server_label, duration, count, pids,
          comms, names, types, pods, pod_namespaces, containers, timeout, k8s_log_dir, quiet, debug,
          heartbeat_path) -> None:
    """Watch DNS queries live (needs root and bcc), storing them in the log.

    \b
    Examples:
      sudo dnswatch watch
      sudo dnswatch watch -i eth0 --responses
      sudo dnswatch watch --comm curl --json
      sudo dnswatch watch --all-netns --pod-namespace shop
      sudo dnswatch watch --all-netns --responses --metrics :9553 --json-format ecs
    """
    from dnswatch import netns
    from dnswatch.enrich import Enricher
    from dnswatch.jsonlines import JsonLinesSink
    from dnswatch.metrics import HealthUpdater, MetricsError, MetricsServer, MetricsSink
    from dnswatch.sources.live import MAX_PORTS, LiveCapture, LiveCaptureError
    from dnswatch.watch import NetnsTracker, RowFilter, row_dict, run_watch

    ports = tuple(dict.fromkeys(ports)) or (53,)
    if len(ports) > MAX_PORTS:  # each port is a compare in the kernel filter, which has room for MAX_PORTS
        raise click.ClickException(
            f"{len(ports)} --port options: live capture filters at most {MAX_PORTS} DNS ports; drop some, or capture "
            "to a file (tcpdump -w) and replay it, which takes any number of --port")
    if netns_specs and all_netns:
        raise click.UsageError("--netns and --all-netns do not go together: --all-netns already includes every one")
    try:
        netns_paths = [netns.resolve(spec) for spec in netns_specs] or None
    except netns.NetnsError as exc:
        raise click.ClickException(str(exc))
    if all_netns:
        netns_paths = list(netns.discover().values())
    row_filter = RowFilter(pids=pids, comms=comms, names=names, types=types, pods=pods,
                           pod_namespaces=pod_namespaces, containers=containers)
    as_json = as_json or json_format is not None
    metrics = None
    if metrics_listen:
        try:
            metrics = MetricsServer(MetricsSink(metrics_max_series, server_label=metrics_server_label),
                                    metrics_listen)
            metrics.start()
        except MetricsError as exc:
            raise click.ClickException(str(exc))
    capture = LiveCapture(interfaces=list(interfaces) or None, ports=ports, responses=responses, debug=debug,
                          netns=netns_paths)
    try:
        capture.open()
    except LiveCaptureError as exc:
        if metrics is not None:
            metrics.close()
        raise click.ClickException(str(exc))
    store = None
    if not no_db:
        try:
            store = Store(db_path or default_db_path())
        except StoreError as exc:
            capture.close()
            if metrics is not None:
                metrics.close()
            raise click.ClickException(str(exc))
        _notices(store)
    shown = {"n": 0}
    out = sys.stdout

    def show(kind: str, row) -> None:
        if not row_filter(row):
            return
        if kind == "Q":
            shown["n"] += 1
        if quiet or as_json:  # JSON lines come from the stored rows (a sink), once each row is complete
            return
        out.write(event_line(kind, row_dict(row)) + "\n")
        out.flush()

    enricher = Enricher(k8s_log_dir=k8s_log_dir)
    capture.on_task = enricher.process_names.name  # while the sender exists, not once the reorder window is past
    capture.on_process = enricher.processes.seen
    sinks = []  # they get the rows the log stores, after the filters
    if metrics is not None:
        sinks.append(metrics.sink)
    if as_json and not quiet:
        sinks.append(JsonLinesSink(out, json_format or "native", row_filter=row_filter if row_filter.active else None))
    stop = StopSignals().__enter__()  # from here on Ctrl-C, SIGTERM and SIGHUP end the capture cleanly
    pipeline = Pipeline(store, "live", capture.describe(), ports, timeout,
                        options={"interfaces": list(interfaces), "responses": responses, "netns": list(netns_specs),
                                 "all_netns": all_netns},
                        on_query=lambda row: show("Q", row),
                        on_response=(lambda row: show("R", row)) if responses else None,
                        enrich=enricher,
                        row_filter=row_filter if row_filter.active else None,
                        expect_responses=responses, sinks=sinks)
    pipeline.lookups.server_pod_of = enricher.server_pod
    where = f", logging to {safe_text(store.path)}" if store else ""
    if metrics is not None:
        where += f", metrics on {metrics.url}"
    heartbeat = None
    if heartbeat_path:
        from dnswatch.health import Heartbeat

        try:
            heartbeat = Heartbeat(heartbeat_path)
        except OSError as exc:
            capture.close()
            if store is not None:
                store.close()
            if metrics is not None:
                metrics.close()
            raise click.ClickException(f"cannot write the heartbeat file {heartbeat_path} ({exc.strerror}): "
                                       "give --heartbeat a writable path")
    click.echo(f"Watching DNS on {capture.describe()}{where}. Ctrl-C to end.", err=True)
    error = None
    try:
        summary = run_watch(capture, pipeline, duration=duration, count=count, shown=lambda: shown["n"],
                            tracker=NetnsTracker(capture) if all_netns else None, stop=stop,
                            on_tick=HealthUpdater(metrics.sink, pipeline, capture, store) if metrics else None,
                            heartbeat=heartbeat.beat if heartbeat else None)
    except Exception as exc:  # noqa: BLE001 - recorded as 'failed'; the summary first, then the error
        error, summary = exc, pipeline.counters()
    if heartbeat is not None:
        heartbeat.close()
    if store is not None:
        try:
            store.close()
        except StoreError as exc:
            error = error or exc
    if metrics is not None:
        metrics.close()
    stop.__exit__(None, None, None)
    click.echo(
        f"{summary.queries:,} queries, {summary.responses:,} responses, {summary.malformed:,} malformed, "
        f"{summary.dropped:,} lost ({losses_text(summary.losses)}), {summary.duplicates:,} duplicate copies, "
        f"{summary.retries:,} retries; "
        f"{summary.rows:,} rows stored in {summary.seconds:.1f}s",
        err=True,
    )
    if isinstance(error, StoreError):
        raise click.ClickException(str(error))
    if error is not None:
        raise error  # a bug: its traceback, after the capture was marked 'failed' and summarised


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
def doctor(as_json: bool) -> None:
    """Can this machine run live capture? Each check says ok, or what to fix."""
    from dnswatch.doctor import REQUIRED, ready, run_checks

    checks = run_checks()
    if as_json:
        click.echo(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        for c in checks:
            if c.ok:
                mark = click.style("ok  ", fg="green")
            elif c.name in REQUIRED:
                mark = click.style("FAIL", fg="red")
            else:
                mark = click.style("warn", fg="yellow")  # not needed for live capture
            click.echo(f"{mark} {c.name}: {c.detail}")
            if not c.ok and c.fix:
                click.echo(f"     fix: {c.fix}")
        click.echo("Live capture: " + ("ready." if ready(checks) else "not possible until the FAIL lines are fixed."))
    if not ready(checks):
        sys.exit(1)


@cli.command()
@click.option("--heartbeat", "heartbeat_path", envvar="DNSWATCH_HEARTBEAT", required=True, metavar="FILE",
              help="The file `watch --heartbeat` touches (default: $DNSWATCH_HEARTBEAT).")
@click.option("--max-age", type=click.FloatRange(min=1), default=30, show_default=True, metavar="SECONDS",
              help="Fail when the heartbeat is older than this.")
def health(heartbeat_path: str, max_age: float) -> None:
    """Liveness probe: exit 0 while `watch` is capturing, 1 once its heartbeat is stale or gone."""
    from dnswatch.health import check

    ok, message = check(heartbeat_path, max_age)
    click.echo(message, err=not ok)
    if not ok:
        sys.exit(1)


def main(argv: Optional[List[str]] = None) -> None:
    cli.main(args=argv, prog_name="dnswatch")


if __name__ == "__main__":
    main()
