"""Command line: parses options, calls the library, formats output. No capture or decoding logic here."""
from __future__ import annotations

import json
import sqlite3
import sys
from itertools import islice
from typing import List, Optional, Sequence

import click

from dnswatch import __version__
from dnswatch.correlate import DEFAULT_TIMEOUT
from dnswatch.output import event_line, safe_text, write_rows
from dnswatch.pipeline import Pipeline, Summary
from dnswatch.schema import TABLES, describe
from dnswatch.search import SearchError, SearchFilters, build_search
from dnswatch.sources.pcap import CaptureFormatError, PcapReader, file_size
from dnswatch.store import Store, StoreError, default_db_path, open_readonly


def db_option(f):
    return click.option(
        "--db", "db_path", default=None, metavar="PATH",
        help="SQLite log file (default: $DNSWATCH_DB, else ./dnswatch.db).",
    )(f)


def port_option(f):
    return click.option(
        "--port", "ports", type=click.IntRange(1, 65535), multiple=True, metavar="PORT",
        help="DNS port to decode (repeatable; default 53).",
    )(f)


def format_options(f):
    f = click.option("--table", "fmt", flag_value="table", help="Output as a table.")(f)
    f = click.option("--csv", "fmt", flag_value="csv", help="Output as CSV.")(f)
    f = click.option("--nl", "fmt", flag_value="nl", help="Output newline-delimited JSON.")(f)
    f = click.option("--json", "fmt", flag_value="json", default=True, help="Output a JSON array (default).")(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("--timeout", type=float, default=DEFAULT_TIMEOUT, show_default=True,
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
    try:
        store = Store(db_path, live_columns=False, bulk=True)
    except StoreError as exc:
        raise click.ClickException(str(exc))
    try:
        for path in files:
            try:
                summary = _replay_one(store, path, ports, timeout, progress)
            except CaptureFormatError as exc:
                failures += 1
                click.echo(f"Error: {exc}", err=True)
                continue
            summaries.append((path, summary))
            for warning in summary.warnings:
                click.echo(f"Warning: {safe_text(warning)}", err=True)
            if as_json:
                click.echo(json.dumps({"file": path, **_summary_dict(summary)}))
            else:
                click.echo(_summary_text(path, summary))
    except StoreError as exc:
        raise click.ClickException(str(exc))
    finally:
        try:
            store.close()
        except StoreError:
            pass
    if failures:
        raise click.ClickException(f"{failures} of {len(files)} files could not be read (see above)")


def _replay_one(store: Store, path: str, ports: Sequence[int], timeout: float, progress: bool) -> Summary:
    reader = PcapReader(path)
    pipeline = Pipeline(store, "pcap", path, ports, timeout, options={"format": reader.format})
    size = file_size(path)
    status = "complete"
    try:
        if progress and size:
            with click.progressbar(length=size, label=click.format_filename(path), file=sys.stderr) as bar:
                done = 0
                frames = reader.frames()
                while True:
                    before = pipeline.summary.frames
                    pipeline.feed_all(islice(frames, 0x4000))
                    if pipeline.summary.frames == before:
                        break
                    now = reader.position()
                    bar.update(now - done)
                    done = now
                bar.update(size - done)
        else:
            pipeline.feed_all(reader.frames())
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        pipeline.summary.warnings.extend(reader.warnings)
        unknown = pipeline.decoder.unknown_linktypes()
        if unknown:
            pipeline.summary.warnings.append(
                f"{path}: frames with unsupported link types {sorted(unknown)} were skipped; dnswatch reads Ethernet, "
                "Linux cooked v1/v2, raw IP and BSD loopback"
            )
        summary = pipeline.finish(status)
        reader.close()
    if summary.frames and sum(unknown.values()) == summary.frames:
        raise CaptureFormatError(summary.warnings[-1])
    return summary


def _summary_dict(s: Summary) -> dict:
    return {
        "frames": s.frames, "dns_messages": s.dns_messages, "queries": s.queries, "responses": s.responses,
        "malformed": s.malformed, "dropped": s.dropped, "losses": s.losses, "duplicates": s.duplicates,
        "retries": s.retries, "repeated_responses": s.repeated_responses, "unanswered": s.unanswered,
        "response_only": s.response_only, "rows": s.rows, "seconds": round(s.seconds, 3),
        "frames_per_second": round(s.rate), "malformed_reasons": s.malformed_reasons, "warnings": s.warnings,
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
    return text + f" in {s.seconds:.2f}s ({s.rate:,.0f} frames/s)"


# -- query / search / schema ---------------------------------------------------------------------

def _open(db_path: Optional[str], attach=()):
    try:
        return open_readonly(db_path or default_db_path(), attach)
    except StoreError as exc:
        raise click.ClickException(str(exc))


def _run_sql(db, sql: str, params, fmt: str) -> None:
    try:
        cursor = db.conn.execute(sql, params)
    except sqlite3.Error as exc:
        raise click.ClickException(f"SQL error: {exc}")
    columns = [d[0] for d in cursor.description or ()]
    rows = (dict(zip(columns, r)) for r in cursor)
    out = sys.stdout
    try:
        write_rows(rows, fmt, out, columns)
    except sqlite3.Error as exc:
        raise click.ClickException(f"SQL error: {exc}")


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
@click.option("--pid", "pids", type=int, multiple=True, help="Sending process id (repeatable).")
@click.option("--comm", "comms", multiple=True, help="Sending command name (repeatable).")
@click.option("--pod", "pods", multiple=True, help="Kubernetes pod name (repeatable; a single glob works too).")
@click.option("--pod-namespace", "pod_namespaces", multiple=True, help="Kubernetes namespace (repeatable).")
@click.option("--container", "containers", multiple=True, help="Container name or id prefix (repeatable).")
@click.option("--since", help="From this time: 10m, 2h, 1d (ago), 2026-11-01, 2026-11-01T14:30, Unix seconds.")
@click.option("--until", help="Up to this time (same forms as --since).")
@click.option("--limit", type=int, default=100, show_default=True, help="At most this many rows (0: all).")
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
@click.option("--metrics-max-series", type=click.IntRange(1, 100_000), default=200, show_default=True,
              metavar="N", help="At most N label sets (pod/container or process) in the metrics; the rest are "
                                "counted under 'other'.")
@click.option("--metrics-server-label", is_flag=True, help="Add the resolver's address as a 'server' label.")
@click.option("--duration", type=float, metavar="SECONDS", help="Stop after this many seconds.")
@click.option("--count", type=int, metavar="N", help="Stop after N queries shown.")
@click.option("--pid", "pids", type=int, multiple=True, help="Only this process id (repeatable).")
@click.option("--comm", "comms", multiple=True, help="Only this command name (repeatable).")
@click.option("--name", "names", multiple=True, help="Only names containing this (or matching this glob).")
@click.option("--type", "types", multiple=True, help="Only this query type (repeatable).")
@click.option("--pod", "pods", multiple=True, help="Only this Kubernetes pod (repeatable).")
@click.option("--pod-namespace", "pod_namespaces", multiple=True, help="Only this Kubernetes namespace (repeatable).")
@click.option("--container", "containers", multiple=True, help="Only this container name or id prefix (repeatable).")
@click.option("--timeout", type=float, default=DEFAULT_TIMEOUT, show_default=True,
              help="Seconds a query waits for its response (with --responses).")
@click.option("--k8s-log-dir", default="/var/log", show_default=True, metavar="DIR",
              help="Where the kubelet's pods/ and containers/ log folders are (pod and container names).")
@click.option("--quiet", "-q", is_flag=True, help="Print no per-query lines (still stores them).")
@click.option("--debug", is_flag=True, help="Show the BPF compiler/verifier output on failure.")
def watch(interfaces, ports, responses, netns_specs, all_netns, db_path, no_db, as_json, json_format,
          metrics_listen, metrics_max_series, metrics_server_label, duration, count, pids,
          comms, names, types, pods, pod_namespaces, containers, timeout, k8s_log_dir, quiet, debug) -> None:
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
    from dnswatch.sources.live import LiveCapture, LiveCaptureError
    from dnswatch.watch import NetnsTracker, RowFilter, row_dict, run_watch

    ports = tuple(ports) or (53,)
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
    pipeline = Pipeline(store, "live", capture.describe(), ports, timeout,
                        options={"interfaces": list(interfaces), "responses": responses, "netns": list(netns_specs),
                                 "all_netns": all_netns},
                        on_query=lambda row: show("Q", row),
                        on_response=(lambda row: show("R", row)) if responses else None,
                        enrich=enricher,
                        row_filter=row_filter if row_filter.active else None,
                        expect_responses=responses, sinks=sinks)
    pipeline.lookups.server_pod_of = enricher.server_pod
    where = f", logging to {store.path}" if store else ""
    if metrics is not None:
        where += f", metrics on {metrics.url}"
    click.echo(f"Watching DNS on {capture.describe()}{where}. Ctrl-C to end.", err=True)
    try:
        summary = run_watch(capture, pipeline, duration=duration, count=count, shown=lambda: shown["n"],
                            tracker=NetnsTracker(capture) if all_netns else None,
                            on_tick=HealthUpdater(metrics.sink, pipeline, capture, store) if metrics else None)
    except StoreError as exc:
        raise click.ClickException(str(exc))
    finally:
        if store is not None:
            store.close()
        if metrics is not None:
            metrics.close()
    click.echo(
        f"{summary.queries:,} queries, {summary.responses:,} responses, {summary.malformed:,} malformed, "
        f"{summary.dropped:,} lost ({losses_text(summary.losses)}), {summary.duplicates:,} duplicate copies, "
        f"{summary.retries:,} retries; "
        f"{summary.rows:,} rows stored in {summary.seconds:.1f}s",
        err=True,
    )


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


def main(argv: Optional[List[str]] = None) -> None:
    cli.main(args=argv, prog_name="dnswatch")


if __name__ == "__main__":
    main()
