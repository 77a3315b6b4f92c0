"""Command line: parses options, calls the library, formats output. No capture or decoding logic here."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import stat
import sys
from collections import Counter
from typing import List, Optional, Sequence, Tuple

import click

from dnswatch import __version__
from dnswatch.correlate import DEFAULT_TIMEOUT
from dnswatch.output import (ClosableOutput, EventFormatter, NeverWaitingOutput, colour_enabled, exit_on_broken_pipe,
                             safe_message, safe_text, write_rows)
from dnswatch.pcapng import restore_attribution
from dnswatch.probe import dns_on_other_ports, file_fingerprint
from dnswatch.pipeline import Pipeline, Summary
from dnswatch.schema import LOG_TABLE, TABLES, describe
from dnswatch.search import (DEFAULT_COLUMNS, SORT_HELP, SORTS, SearchError, SearchFilters, build_passive,
                             check_mnemonics, check_window, known_qtypes, parse_time, presentation, register_functions,
                             run_search)
from dnswatch.sources.pcap import CaptureFormatError, PcapReader, file_size
from dnswatch.stop import OUTPUT_CLOSED, StopSignals
from dnswatch.store import Store, StoreError, default_db_path, open_readonly, read_only_connection
from dnswatch.top import GROUPS
from dnswatch.top import SORTS as SORTS_TOP


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

    # names users try for a command under another name: the error says which one it is
    OTHER_NAMES = {"sql": "query", "select": "query", "live": "watch", "capture": "watch", "read": "replay",
                   "import": "replay", "find": "search", "grep": "search", "stats": "top"}

    def resolve_command(self, ctx: click.Context, args):
        name = args[0] if args else None
        if name in self.OTHER_NAMES and name not in self.commands:
            ctx.fail(f"No such command {name!r}: that is `dnswatch {self.OTHER_NAMES[name]}` "
                     f"(dnswatch {self.OTHER_NAMES[name]} --help)")
        return super().resolve_command(ctx, args)


@click.group(cls=_EscapingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dnswatch")
def cli() -> None:
    """Who resolved what, when, and what did they get.

    Live DNS capture with eBPF (watch, top), offline replay of pcap files (replay), and search and SQL
    over the recorded log (search, top, query, schema). Every command that reads or writes a log takes
    --db PATH (default: $DNSWATCH_DB, else ./dnswatch.db).
    """


# -- replay --------------------------------------------------------------------------------------

@cli.command(short_help="Decode pcap/pcapng files into the log.")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@db_option
@port_option
@click.option("--timeout", type=SECONDS, default=DEFAULT_TIMEOUT, show_default=True,
              help="Seconds (capture time) a query waits for its response before it is unanswered.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--lookups/--no-lookups", "with_lookups", default=True, show_default=True,
              help="Group queries into lookups (resolver calls: search-path candidates, A/AAAA, retries, NAT copies, "
                   "upstream hops): queries.lookup_id and the lookups table. --no-lookups leaves lookup_id and "
                   "nat_dst empty, stores DNAT copies twice, and saves its cost (see README, Lookups).")
@click.option("--skip-existing", is_flag=True,
              help="Skip files already replayed whole into this log (same size and first 64 KiB); default: warn and "
                   "replay.")
def replay(files: Sequence[str], db_path: Optional[str], ports: Sequence[int], timeout: float,
           progress: Optional[bool], as_json: bool, skip_existing: bool, with_lookups: bool) -> None:
    """Decode pcap/pcapng captures (.gz too; - for stdin) into the log.

    \b
    Example:
      dnswatch replay capture.pcap other.pcapng.gz --db dns.db
    """
    db_path = db_path or default_db_path()
    ports = tuple(ports) or (53,)
    if progress is None:
        progress = sys.stderr.isatty()
    failures = skipped = 0
    summaries = []
    # pcapng files may carry `watch -w` packet comments: their rows then have process and pod columns
    live_columns = any(_capture_format(p) == "pcapng" for p in files)
    with StopSignals() as stop:  # Ctrl-C, SIGTERM, SIGHUP: stop between two chunks, record, summarise
        try:
            store = Store(db_path, live_columns=live_columns, bulk=True)
        except StoreError as exc:
            raise click.ClickException(str(exc))
        _notices(store)
        seen = _replayed_fingerprints(db_path)  # once the log's files were checked (and tightened) by the Store
        try:
            for path in files:
                if stop.requested:
                    break
                fingerprint = file_fingerprint(path)
                earlier = seen.get(fingerprint) if fingerprint else None
                if earlier is not None and earlier[2] in PARTIAL:
                    # a replay that failed or was stopped holds part of the file: skipping it would lose the rest
                    click.echo(f"Warning: {safe_text(path)} is in this log only in part (capture {earlier[0]}, "
                               f"replayed {earlier[1]} UTC, status {earlier[2]}): replayed again, so the rows of "
                               f"capture {earlier[0]} will be there twice (queries.capture_id tells them apart)",
                               err=True)
                elif earlier is not None:
                    if skip_existing:
                        skipped += 1
                        click.echo(f"Skipped {safe_text(path)}: already in the log (capture {earlier[0]}, "
                                   f"replayed {earlier[1]} UTC)", err=True)
                        continue
                    click.echo(f"Warning: {safe_text(path)} is already in this log (capture {earlier[0]}, replayed "
                               f"{earlier[1]} UTC): its rows will be there twice; --skip-existing skips such files",
                               err=True)
                try:
                    summary, error = _replay_one(store, path, ports, timeout, progress, stop, fingerprint, with_lookups)
                except CaptureFormatError as exc:  # not a capture at all: nothing was recorded
                    if stop.requested:
                        break  # stdin ended by the stop before a capture header came
                    failures += 1
                    click.echo(f"Error: {safe_text(exc)}", err=True)
                    continue
                if fingerprint:
                    seen[fingerprint] = ("this run", "now", None)
                summaries.append((path, summary))
                for warning in summary.warnings:
                    click.echo(f"Warning: {safe_text(warning)}", err=True)
                hint = _other_ports_hint(path, ports, summary)
                if as_json:
                    click.echo(json.dumps({"file": path, **_summary_dict(summary),
                                           **({"dns_on_other_ports": hint[0]} if hint else {})}))
                else:
                    click.echo(_summary_text(path, summary) + (f"; {hint[1]}" if hint else ""))
                if isinstance(error, CaptureFormatError):
                    failures += 1
                    click.echo(f"Error: {safe_text(error)}", err=True)
                elif isinstance(error, StoreError):
                    raise click.ClickException(str(error))
                elif error is not None:
                    raise error  # a bug: its traceback, now that the capture says 'failed' and the summary is out
            if len(summaries) > 1:
                total = _total(summaries)
                if as_json:
                    click.echo(json.dumps({"file": None, "files": len(summaries), **_summary_dict(total)}))
                else:
                    click.echo(_summary_text(f"total of {len(summaries)} files", total))
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


def stored_text(rows: int, store: Optional[Store]) -> str:
    """What watch's summary says of the log: rows stored, or how many a full disk refused, and pruned."""
    if store is None:
        return "nothing stored (--no-db)"
    text = f"{rows:,} rows stored"
    if store.unstored:  # counts malformed messages too: no figure of rows stored to subtract it from
        text = f"{rows:,} rows, {store.unstored:,} rows and malformed messages not stored (disk full)"
    if store.pruned:
        text += f", {store.pruned:,} old rows pruned"
    if store.settled is False:  # retention at close stopped at its time limit
        text += " (pruning stopped at its time limit: the log is above its bound until the next prune)"
    return text


def _notices(store: Store) -> None:
    for notice in store.notices:
        click.echo(f"Warning: {safe_text(notice)}", err=True)


def _capture_format(path: str) -> Optional[str]:
    if path == "-":
        return None
    try:
        with PcapReader(path) as reader:
            return reader.format
    except CaptureFormatError:
        return None


PARTIAL = ("running", "interrupted", "failed")  # captures.status of a replay that holds only part of its file
# ('running' after one killed or failed on a full disk; 'damaged' was read as far as it can be)


def _replayed_fingerprints(db_path: str) -> dict:
    """fingerprint -> (capture id, when, status) of the files this log already holds (a whole replay of one
    over a partial one)."""
    if not os.path.exists(db_path):
        return {}
    try:
        conn = read_only_connection(db_path)
        rows = conn.execute(
            "SELECT json_extract(options, '$.fingerprint'), id, strftime('%Y-%m-%d %H:%M:%S', started, 'unixepoch'), "
            "status FROM captures WHERE kind = 'pcap' AND json_extract(options, '$.fingerprint') IS NOT NULL "
            "ORDER BY id").fetchall()
        conn.close()
    except (StoreError, sqlite3.Error):
        return {}
    found: dict = {}
    for fp, cid, when, status in rows:  # a complete replay of the file counts over partial ones
        if fp not in found or found[fp][2] in PARTIAL:
            found[fp] = (cid, when, status)
    return found


def _other_ports_hint(path: str, ports: Sequence[int], s: Summary):
    """When a file shows few DNS messages, look for DNS on other ports: ({port: n}, text) or None."""
    if s.frames == 0 or s.dns_messages * 2 > s.frames:
        return None
    found = dns_on_other_ports(path, ports)
    if not found:
        return None
    listed = ", ".join(f"{n:,} on port {p}" for p, n in found.items())
    flags = " ".join(f"--port {p}" for p in list(found)[:4])
    return ({str(p): n for p, n in found.items()},
            f"DNS-looking messages on other ports among the first frames ({listed}): replay with {flags}")


def _total(summaries) -> Summary:
    t = Summary()
    for _path, s in summaries:
        for name in ("frames", "dns_messages", "queries", "responses", "malformed", "dropped", "duplicates",
                     "unanswered", "response_only", "rows", "seconds"):
            setattr(t, name, getattr(t, name) + getattr(s, name))
        for stage, n in s.losses.items():
            t.losses[stage] = t.losses.get(stage, 0) + n
    # complete when every file was; else how many files ended otherwise, e.g. "1 damaged, 1 interrupted"
    others = Counter(s.status for _path, s in summaries if s.status != "complete")
    t.status = ", ".join(f"{n} {status}" for status, n in sorted(others.items())) or "complete"
    return t


def _replay_one(store: Store, path: str, ports: Sequence[int], timeout: float, progress: bool,
                stop: StopSignals, fingerprint: Optional[str] = None, with_lookups: bool = True
                ) -> Tuple[Summary, Optional[BaseException]]:
    """Replay one file. Every way it ends records a status ('complete', 'interrupted', 'failed', 'damaged') and
    returns the summary, with the error that ended it, if any. Raises CaptureFormatError only before it started."""
    reader = PcapReader(path, lambda: stop.requested)  # stdin: a stop ends a silent pipe too
    options = {"format": reader.format}
    if fingerprint:
        options["fingerprint"] = fingerprint
    pipeline = Pipeline(store, "pcap", path, ports, timeout, options=options,
                        enrich=restore_attribution if reader.format == "pcapng" else None, lookups=with_lookups)
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
            if not pipeline.feed_reader(reader, lambda: stop.requested, advance):
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
    if isinstance(error, StoreError) and pipeline.capture_id is not None:  # rows sent were not all stored
        summary.rows = _rows_stored(store.path, pipeline.capture_id, summary.rows)
    return summary, error


def _rows_stored(path: str, capture_id: int, otherwise: int) -> int:
    """The rows of a capture in the log, after its writer failed (a full disk): not the rows sent to it."""
    try:
        conn = read_only_connection(path)
        try:
            return conn.execute("SELECT count(*) FROM queries WHERE capture_id = ?", (capture_id,)).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return otherwise


def _summary_dict(s: Summary) -> dict:
    return {
        "frames": s.frames, "dns_messages": s.dns_messages, "queries": s.queries, "responses": s.responses,
        "malformed": s.malformed, "dropped": s.dropped, "losses": s.losses, "duplicates": s.duplicates,
        "retries": s.retries, "repeated_responses": s.repeated_responses, "unanswered": s.unanswered,
        "response_only": s.response_only, "rows": s.rows, "seconds": round(s.seconds, 3),
        "frames_per_second": round(s.rate), "malformed_reasons": s.malformed_reasons, "warnings": s.warnings,
        "status": s.status,
    }


_STAGE_NAMES = {"kernel_perf_buffer": "kernel ring buffer"}  # (the log keeps the stage's first name)


def losses_text(losses: dict) -> str:
    """'kernel ring buffer 3, decode 0, ...': every stage, so a reader sees where nothing was lost too."""
    return ", ".join(f"{_STAGE_NAMES.get(stage, stage.replace('_', ' '))} {n:,}" for stage, n in losses.items())


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
    path = db_path or default_db_path()
    for p in [path] + [other for _alias, other in attach]:
        problem = unreadable_log(p)
        if problem:
            raise click.ClickException(problem)
    try:
        db = open_readonly(path, attach)
    except StoreError as exc:
        raise click.ClickException(str(exc))
    for notice in db.conn.notices:
        click.echo(f"Note: {safe_text(notice)}", err=True)
    register_functions(db.conn)
    db.conn.set_progress_handler(_let_signals_in, PROGRESS_STEPS)
    return db


def _let_signals_in() -> int:
    """SQLite's progress callback, every PROGRESS_STEPS steps of a statement: a Python call, so a Ctrl-C during
    one long statement (a recursive CTE, a scan of a large log) is handled at once. It raises here, which stops
    the statement with 'interrupted' (see _sql_error); without it the signal waited for the statement to end."""
    return 0


PROGRESS_STEPS = 100_000  # SQLite VM steps: a few ms


def _sql_error(db, exc: sqlite3.Error) -> str:
    text = str(exc)
    if text == "interrupted":  # the Ctrl-C that _let_signals_in let in
        raise KeyboardInterrupt
    refused = getattr(db.conn, "refused", None)
    if refused and ("not authorized" in text or "authorization denied" in text):
        return f"query only reads the log, and refuses {refused}"
    if "too many attached" in text:
        return "query only reads the log, and refuses ATTACH and VACUUM; --attach ALIAS PATH reads another log"
    if "readonly" in text:
        return f"query only reads the log ({text}); replay and watch write it"
    return f"SQL error: {text}"



def unreadable_log(path: str) -> Optional[str]:
    """Why this user cannot read the log at ``path`` (``sudo watch`` made it root's, mode 0600), with the ways
    out; None when it is readable (or absent: open_readonly says so)."""
    candidates = [path, path + "-wal", path + "-shm"]
    for p in candidates:
        if not os.path.exists(p):
            continue
        mode = os.stat(p).st_mode
        if not stat.S_ISREG(mode):  # a FIFO would hang the reader for good, a folder says 'disk I/O error'
            kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")
            return f"{p}: {kind}, not a log file; pass the log's file as --db"
        # read access decides: a -shm this user cannot write (read-only media) is read around (store.open_readonly)
        if not os.access(p, os.R_OK):
            st = os.stat(p)
            try:
                import pwd

                owner = pwd.getpwuid(st.st_uid).pw_name
            except (KeyError, ImportError):
                owner = f"uid {st.st_uid}"
            return (
                f"{path}: cannot open: {os.path.basename(p)} belongs to {owner} (mode {st.st_mode & 0o777:04o}), "
                f"probably made by `sudo dnswatch watch`; read it with `sudo dnswatch ...`, or take it over with "
                f"`sudo chown $(id -un) {path}*` (the log holds every host user's lookups, so keep it private), "
                f"or pass another --db"
            )
    return None


def _run_sql(db, sql: str, params, fmt: str, wrap=None) -> None:
    try:
        cursor = db.conn.execute(sql, params)
    except sqlite3.Error as exc:
        raise click.ClickException(_sql_error(db, exc))
    columns = [d[0] for d in cursor.description or ()]
    rows = (dict(zip(columns, r)) for r in cursor)
    if wrap is not None:
        rows = wrap(rows)
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
        cursor.close()  # the read transaction ends here, before a slow reader gets the spool
        if fd is not None:
            out.close()
    except sqlite3.Error as exc:
        raise click.ClickException(_sql_error(db, exc))
    except BrokenPipeError:  # the reader went away (| head): the query stops here
        if fd is None:
            raise
        out.discard()
        exit_on_broken_pipe(fd)
    finally:
        cursor.close()  # (again: harmless) when the output or the statement failed


@cli.command(short_help="Run SQL against the log (read-only).")
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

    The view queries_utc is the queries table with readable UTC times first (ts_utc, response_ts_utc).

    \b
    Examples:
      dnswatch query "select ts_utc, qname, rcode from queries_utc order by ts desc limit 5" --table
      dnswatch query "select qname, count(*) n from queries group by 1 order by n desc limit 10"
      dnswatch query "select 'a' node, * from queries union all select 'b', * from b.queries" \\
          --db node-a.db --attach b node-b.db
    """
    for alias, _path in attach:  # a name the SQL can write unquoted as ALIAS.queries (and quoting cannot break)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", alias) or alias.lower() in ("main", "temp"):
            raise click.BadParameter(f"{alias!r}: an alias is letters, digits and _ (not main or temp)",
                                     param_hint="--attach")
    for text in (sql, *(v for pair in params for v in pair)):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # bytes the shell passed that are not UTF-8 (lone surrogates): SQLite takes text
            shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise click.ClickException(f"not UTF-8 text: {shown} (write such bytes as a blob, x'ff', or as \\DDD "
                                       "in a name, the way names are stored)")
    _run_sql(_open(db_path, attach), sql, dict(params), fmt)


@cli.command(short_help="Find queries by name and other fields.")
@click.argument("name", required=False)
@db_option
@click.option("--type", "types", multiple=True, help="Query type (A, AAAA, TXT...; repeatable).")
@click.option("--rcode", "rcodes", multiple=True, help="Response code (NXDOMAIN, SERVFAIL...; repeatable).")
@click.option("--status", type=click.Choice(["answered", "unanswered", "response_only", "query_only"]),
              help="answered, unanswered (no response within the timeout), response_only (the query was not seen) "
                   "or query_only (captured without --responses).")
@click.option("--src", metavar="ADDR|CIDR", help="Client address or prefix (198.18.1.2, 198.18.0.0/15, fd00::/8).")
@click.option("--dst", metavar="ADDR|CIDR", help="Server address or prefix.")
@click.option("--answer", help="Rows whose answers contain this value (an address, a CNAME target...).")
@click.option("--pid", "pids", type=PID, multiple=True, help="Sending process id (repeatable).")
@click.option("--comm", "comms", multiple=True, help="Sending command name (repeatable).")
@click.option("--pod", "pods", multiple=True, help="Kubernetes pod name (repeatable; a single glob works too).")
@click.option("--pod-namespace", "pod_namespaces", multiple=True, help="Kubernetes namespace (repeatable).")
@click.option("--container", "containers", multiple=True, help="Container name or id prefix (repeatable).")
@click.option("--since", help="From this time: 10m, 2h, 1d (ago), 2026-11-01, 2026-11-01T14:30, Unix seconds.")
@click.option("--until", help="Up to this time (same forms as --since).")
@click.option("--limit", type=LIMIT, default=100, show_default=True,
              help="At most this many rows (0: all); stderr says when more matched.")
@click.option("--contains", is_flag=True,
              help="NAME is a substring anywhere in the name (slower: reads every distinct name, not an index range).")
@click.option("--sort", type=click.Choice(sorted(SORTS)), default="ts", show_default=True, help=f"Order: {SORT_HELP}.")
@click.option("--reverse", is_flag=True, help="Reverse the order (oldest, fastest or Z first).")
@click.option("--all-columns", is_flag=True, help="Every column of the queries table.")
@click.option("--lookups", "lookups", is_flag=True,
              help="Lookups (resolver calls: search-path candidates, A/AAAA, retries) instead of queries; NAME matches "
                   "any candidate. See `dnswatch schema`, table lookups.")
@click.option("--min-wasted", type=click.IntRange(0), metavar="N",
              help="With --lookups: only lookups that wasted at least N queries on search-path expansions.")
@format_options
def search(name: Optional[str], db_path: Optional[str], types, rcodes, status, src, dst, answer, pids, comms, pods,
           pod_namespaces, containers, since, until, limit: int, contains: bool, sort: str, reverse: bool,
           all_columns: bool, lookups: bool, min_wasted: Optional[int], fmt: str) -> None:
    """Find queries by name and other fields, newest first.

    NAME is a domain: example.com matches example.com and every name under it (www.example.com,
    a.b.example.com), case-insensitively, from an index. With * ? or [ it is a glob over the whole name
    (*.example.com, api-?.example.com; \\* \\? \\[ are those characters themselves). Names are stored as
    dig shows them, and NAME is read the same way: 'café' finds caf\\195\\169, 'a b' finds a\\032b.
    --contains matches a substring anywhere, which must scan every distinct name. --answer also reports, from passive DNS, names seen before the oldest row kept.

    \b
    Example:
      dnswatch search example.com --type AAAA --since 2026-11-01
      dnswatch search --answer 198.51.100.7 --since 180d
      dnswatch search --lookups --pod-namespace shop --min-wasted 4
    """
    if lookups:
        from dnswatch.lookups import build_lookup_search
        from dnswatch.schema import LOOKUP_COLUMNS

        if types or status or answer:
            raise click.UsageError("--type, --status and --answer select queries; with --lookups use NAME, --rcode, "
                                   "--src, --pid, --comm, --pod..., --since/--until, --min-wasted")
        try:
            filters = SearchFilters(name=presentation(name) if name else name, rcodes=rcodes, src=src, pids=pids,
                                    comms=comms, pods=pods, pod_namespaces=pod_namespaces, containers=containers,
                                    since=since, until=until, limit=limit,
                                    columns=["ts_utc"] + LOOKUP_COLUMNS if all_columns else [])
            sql, params = build_lookup_search(filters, min_wasted)
        except SearchError as exc:
            raise click.ClickException(str(exc))
        _run_sql(_open(db_path), sql, params, fmt)
        return
    if min_wasted is not None:
        raise click.UsageError("--min-wasted goes with --lookups")
    if limit < 0:
        raise click.BadParameter("0 (no limit) or more", param_hint="--limit")
    filters = SearchFilters(name=name, types=types, rcodes=rcodes, src=src, dst=dst, pids=pids, comms=comms,
                            pods=pods, pod_namespaces=pod_namespaces, containers=containers, answer=answer,
                            status=status, since=since, until=until, contains=contains, sort=sort, reverse=reverse,
                            limit=limit + 1 if limit > 0 else limit,  # one row more: to know whether it stopped there
                            columns=["id", "ts_utc"] + [c.name for c in TABLES[0].columns if c.name != "id"]
                            if all_columns else [])
    db = _open(db_path)
    _require_current(db.conn, db_path)
    try:
        columns, found = run_search(db.conn, filters)
        rows = [dict(zip(columns, r)) for r in found]
        passive = build_passive(filters, db.conn.execute(f"SELECT min(ts) FROM {LOG_TABLE}").fetchone()[0])
        if passive is not None and (not filters.limit or len(rows) < filters.limit):
            cur = db.conn.execute(*passive)
            rows += [dict(zip([d[0] for d in cur.description], r)) for r in cur][
                :filters.limit - len(rows) if filters.limit else None]
    except SearchError as exc:
        raise click.ClickException(str(exc))
    except sqlite3.Error as exc:
        raise click.ClickException(_sql_error(db, exc))
    more = bool(limit) and len(rows) > limit
    write_rows(iter(rows[:limit] if limit else rows), fmt, sys.stdout, filters.columns or DEFAULT_COLUMNS)
    if more:
        click.echo(f"Stopped at --limit {limit}: more rows match (--limit 0 for all of them, or narrow the search).",
                   err=True)


def _require_current(conn, db_path: Optional[str]) -> None:
    from dnswatch.layout import needs_migration

    if needs_migration(conn):
        path = db_path or default_db_path()
        raise click.ClickException(f"{path} was written by an older dnswatch; migrate it in place once with "
                                   f"'dnswatch migrate --db {path}' (or start watch/replay on it)")


@cli.command(short_help="Every table and column of the log, explained.")
@db_option
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
@click.option("--sql", "as_sql", is_flag=True, help="As the CREATE statements.")
@click.option("--json-lines", "json_lines", is_flag=True,
              help="The JSON Schema of `watch --json` lines (versioned) instead.")
@click.option("--ecs", "as_ecs", is_flag=True,
              help="How `watch --json-format ecs` maps columns to Elastic Common Schema fields instead.")
def schema(db_path: Optional[str], as_json: bool, as_sql: bool, json_lines: bool, as_ecs: bool) -> None:
    """Every table and column of the log, with its meaning.

    With --db, also what that log holds: its row counts, and columns it lacks (an older dnswatch wrote it)
    or has beyond these."""
    from dnswatch.jsonlines import ECS_MAPPING, ECS_VERSION, json_lines_schema
    from dnswatch.schema import create_sql

    if db_path is not None:
        _schema_of_log(db_path, as_json)
        return
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
    click.echo(click.style("queries_utc", bold=True) + " (view, in query): the queries table with ts_utc and "
               "response_ts_utc (ISO 8601 UTC) first.")


def _schema_of_log(db_path: str, as_json: bool) -> None:
    db = _open(db_path)
    report = []
    for table in TABLES:
        present = [r[1] for r in db.conn.execute(f"PRAGMA table_info([{table.name}])")]
        defined = [c.name for c in table.columns]
        rows = db.conn.execute(f"SELECT count(*) FROM [{table.name}]").fetchone()[0] if present else None
        report.append({"table": table.name, "rows": rows, "missing": [c for c in defined if c not in present],
                       "extra": [c for c in present if c not in defined], "present": bool(present)})
    if as_json:
        click.echo(json.dumps({"db": db_path, "tables": report}, indent=2))
        return
    click.echo(f"{safe_text(db_path)}:")
    for t in report:
        if not t["present"]:
            click.echo(f"  {t['table']}: absent (a dnswatch that writes this log creates it)")
            continue
        text = f"  {t['table']}: {t['rows']:,} rows"
        if t["missing"]:
            text += f"; lacks {', '.join(t['missing'])} (written by an older dnswatch)"
        if t["extra"]:
            text += f"; also has {', '.join(safe_text(c) for c in t['extra'])}"
        click.echo(text)
    click.echo("Columns and their meaning: dnswatch schema")


# -- the log over time ---------------------------------------------------------------------------

def retention_options(f):
    f = click.option("--retain-rollups", metavar="DURATION",
                     help="Keep hourly rollups (and passive DNS) this long (default with --retain/--max-size: "
                          "400d).")(f)
    f = click.option("--max-size", metavar="SIZE",
                     help="Keep the log file within this size (20GB, 500MB): the oldest data goes first "
                          "(README: Retention).")(f)
    f = click.option("--retain", metavar="DURATION", help="Keep query rows this long (7d, 12h); older ones are pruned.")(f)
    return f


MIN_MAX_SIZE = 1_000_000  # --max-size: 1MB at least


def _retention(retain: Optional[str], max_size: Optional[str], retain_rollups: Optional[str]):
    from dnswatch.layout import Retention
    from dnswatch.maintain import parse_duration, parse_size

    if not (retain or max_size or retain_rollups):
        return None
    try:
        retention = Retention(parse_duration(retain) if retain else None, parse_size(max_size) if max_size else None,
                              parse_duration(retain_rollups or "400d"))
    except ValueError as exc:
        raise click.BadParameter(str(exc))
    # an empty log takes ~200 KB (schema, indexes): a smaller bound would delete every row; 0 would too
    if retention.max_bytes is not None and retention.max_bytes < MIN_MAX_SIZE:
        raise click.BadParameter(f"--max-size {max_size} is below 1MB, which would delete every row; give 1MB or more",
                                 param_hint="'--max-size'")
    for name, value in (("--retain", retention.retain), ("--retain-rollups", retention.retain_rollups)):
        if value is not None and value < 1:
            raise click.BadParameter("keep at least a second of the log (e.g. 7d); to empty it, delete the file",
                                     param_hint=f"'{name}'")
    return retention


@cli.command(short_help="Delete the oldest rows of a log, as watch --retain does.")
@db_option
@retention_options
def prune(db_path: Optional[str], retain, max_size, retain_rollups) -> None:
    """Delete the oldest rows of a log (at rest, or while watch writes): the same rules as watch --retain.

    Deletes in small transactions and records what it deleted in captures (kind 'prune'), with the names,
    answers and senders no kept row refers to any more. Rollups and passive DNS go after --retain-rollups
    (400d), or earlier when --max-size needs their room.

    \b
    Example:
      dnswatch prune --retain 7d --max-size 20GB --db /var/lib/dnswatch/dnswatch.db
    """
    from dnswatch.maintain import prune as prune_log

    retention = _retention(retain, max_size, retain_rollups)
    if retention is None:
        raise click.UsageError("say what to keep: --retain, --max-size and/or --retain-rollups")
    path = db_path or default_db_path()
    try:
        deleted, newest, collected = prune_log(path, retention)
    except StoreError as exc:
        raise click.ClickException(str(exc))
    upto = f", up to {_utc(newest)}" if newest else ""
    entries = sum(v for k, v in collected.items() if k != "aggregates")
    click.echo(f"{safe_text(path)}: {deleted:,} rows pruned{upto}; {entries:,} dictionary entries and "
               f"{collected.get('aggregates', 0):,} rollup, key_hours and passive DNS entries no longer needed deleted")


def _utc(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@cli.command(short_help="Copy the log consistently, even while watch writes.")
@click.argument("out", metavar="OUT.db")
@db_option
@click.option("--since", help="Only query rows from this time (10m, 2h, 7d, ISO time, Unix seconds).")
def export(out: str, db_path: Optional[str], since: Optional[str]) -> None:
    """Copy the log to OUT.db (mode 0600), consistent even while watch writes.

    The copy holds every row committed when it started, in one file (no -wal beside it).

    \b
    Example:
      dnswatch export /tmp/node-a.db --since 1d --db /var/lib/dnswatch/dnswatch.db
    """
    from dnswatch.maintain import export as export_log
    from dnswatch.search import parse_time

    problem = unreadable_log(db_path or default_db_path())
    if problem:
        raise click.ClickException(problem)
    try:
        rows = export_log(db_path or default_db_path(), out, parse_time(since) if since else None)
    except (StoreError, SearchError) as exc:
        raise click.ClickException(str(exc))
    click.echo(f"{safe_text(out)}: {rows:,} rows", err=True)


@cli.command(short_help="Bring an older log to the current layout, in place.")
@db_option
def migrate(db_path: Optional[str]) -> None:
    """Bring a log written by an older dnswatch to the current layout, in place (watch and replay do it too)."""
    import os

    if not os.path.exists(db_path or default_db_path()):
        raise click.ClickException(f"{safe_text(db_path or default_db_path())}: no such database")
    try:
        Store(db_path or default_db_path()).close()
    except StoreError as exc:
        raise click.ClickException(str(exc))
    click.echo(f"{safe_text(db_path or default_db_path())}: up to date", err=True)


# -- live ----------------------------------------------------------------------------------------

def capture_options(f):
    """What to capture: shared by watch and top."""
    for opt in reversed([
        click.option("-i", "--interface", "interfaces", multiple=True, metavar="IF",
                     help="Interface to watch (repeatable; default: every interface)."),
        port_option,
        click.option("--netns", "netns_specs", multiple=True, metavar="NS",
                     help="Capture only in this network namespace: /var/run/netns/NAME, /proc/PID/ns/net, a name "
                          "from `ip netns`, or a pid (repeatable)."),
        click.option("--all-netns", is_flag=True,
                     help="Capture in every network namespace of the host (every pod on a node), picking up new "
                          "ones. The default as root."),
        click.option("--host-only", is_flag=True,
                     help="Capture only in the network namespace dnswatch runs in (the default without root)."),
        click.option("--timeout", type=SECONDS, default=DEFAULT_TIMEOUT, show_default=True,
                     help="Seconds a query waits for its response before it is unanswered."),
        click.option("--k8s-log-dir", default="/var/log", show_default=True, metavar="DIR",
                     help="Where the kubelet's pods/ and containers/ log folders are (pod and container names)."),
        click.option("--debug", is_flag=True, help="Show the BPF compiler/verifier output on failure."),
    ]):
        f = opt(f)
    return f


class _Live:
    """A live capture as the options ask: its namespaces, their names for the screen, and notes on stderr."""

    def __init__(self, interfaces, ports, responses, netns_specs, all_netns, host_only, debug, quiet=False):
        from dnswatch import netns
        from dnswatch.sources.live import LiveCapture, LiveCaptureError, netns_inode

        if sum(map(bool, (netns_specs, all_netns, host_only))) > 1:
            raise click.UsageError("--netns, --all-netns and --host-only do not go together: pick one")
        if not (netns_specs or host_only) and hasattr(os, "geteuid") and os.geteuid() == 0:
            all_netns = True  # as root: containers' and pods' queries too, with their process
        self.all_netns = all_netns
        self.quiet = quiet
        try:
            paths = [netns.resolve(spec) for spec in netns_specs] or None
        except netns.NetnsError as exc:
            raise click.ClickException(str(exc))
        found = netns.discover() if all_netns else {}
        if all_netns:
            paths = list(found.values())
        self.own = netns_inode()
        self.names = {ino: _netns_label(path) for ino, path in found.items()}
        for path in paths or ():
            ino = netns.inode(path)
            if ino is not None:
                self.names.setdefault(ino, _netns_label(path))
        self.capture = LiveCapture(interfaces=list(interfaces) or None, ports=ports, responses=responses,
                                   debug=debug, netns=paths)
        try:
            self.capture.open()
        except LiveCaptureError as exc:
            raise click.ClickException(str(exc))

    def label(self, row) -> str:
        """Where a query came from: its pod, else the `ip netns` name, else the namespace inode."""
        if row.get("pod"):
            container = f":{row['container']}" if row.get("container") else ""
            return f"{row.get('pod_namespace') or '-'}/{row['pod']}{container}"
        ino = row.get("netns")
        if ino is None:
            return "-"
        if ino == self.own:
            return "host"
        return self.names.get(ino) or f"netns:{ino}"

    def on_netns(self, event: str, inode: int, path: Optional[str]) -> None:
        if event == "added" and path:
            self.names[inode] = _netns_label(path)
        if not self.quiet:
            name = self.names.get(inode) or f"netns:{inode}"
            what = "picked up" if event == "added" else "released (gone)"
            click.echo(f"Network namespace {safe_text(name)} ({inode}) {what}", err=True)

    def tracker(self):
        from dnswatch.watch import NetnsTracker

        return NetnsTracker(self.capture, on_change=self.on_netns) if self.all_netns else None


def _netns_label(path: str) -> str:
    from dnswatch.netns import NETNS_RUN_DIRS

    folder, name = os.path.split(path)
    if folder in NETNS_RUN_DIRS:
        return name
    return f"netns:{os.stat(path).st_ino}" if os.path.exists(path) else path


def _open_store(no_db: bool, db_path: Optional[str], capture, retention=None) -> Optional[Store]:
    if no_db:
        return None
    try:
        store = Store(db_path or default_db_path(), retention=retention,
                      on_warning=lambda text: click.echo(f"Warning: {safe_text(text)}", err=True))
    except StoreError as exc:
        capture.close()
        raise click.ClickException(str(exc))
    _notices(store)
    return store


def _terminal_width(stream) -> Optional[int]:
    try:
        if stream.isatty():
            return shutil.get_terminal_size().columns
    except (AttributeError, ValueError, OSError):
        pass
    return None


@cli.command(short_help="Watch DNS queries live (root), storing them.")
@capture_options
@click.option("--responses", is_flag=True, help="Also capture responses: rcode, answers, latency, timeouts.")
@db_option
@click.option("--no-db", is_flag=True, help="Do not store anything; only print.")
@retention_options
@click.option("-w", "--write", "write_path", metavar="FILE.pcapng", type=click.Path(dir_okay=False),
              help="Also write the captured packets to a pcapng file, each with its process, container and pod "
                   "as a packet comment (Wireshark shows them; replay restores them).")
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
@click.option("--lookups/--no-lookups", "with_lookups", default=None,
              help="Group queries into lookups (resolver calls: search-path candidates, A/AAAA, retries, NAT copies, "
                   "upstream hops): queries.lookup_id and the lookups table. Default: on with --responses; without "
                   "them a lookup has no rcodes (nothing to count as wasted) and at 40k queries/s the stage still "
                   "costs too much, so --lookups turns it on there. --no-lookups leaves lookup_id and nat_dst "
                   "empty and stores DNAT copies twice (see README, Lookups).")
@click.option("--wide", is_flag=True, help="Whole lines, never truncated to the terminal's width.")
@click.option("--duration", type=SECONDS, metavar="SECONDS", help="Stop after this many seconds.")
@click.option("--count", "-c", type=COUNT, metavar="N", help="Stop after N queries shown.")
@click.option("--pid", "pids", type=PID, multiple=True, help="Show only this process id (repeatable).")
@click.option("--comm", "comms", multiple=True, help="Show only this command name (repeatable).")
@click.option("--name", "names", multiple=True, help="Show only names containing this (or matching this glob).")
@click.option("--type", "types", multiple=True, help="Show only this query type (repeatable).")
@click.option("--pod", "pods", multiple=True, help="Show only this Kubernetes pod (repeatable).")
@click.option("--pod-namespace", "pod_namespaces", multiple=True,
              help="Show only this Kubernetes namespace (repeatable).")
@click.option("--container", "containers", multiple=True,
              help="Show only this container name or id prefix (repeatable).")
@click.option("--quiet", "-q", is_flag=True,
              help="No per-query text lines (still stores them; --json lines are still printed).")
@click.option("--heartbeat", "heartbeat_path", envvar="DNSWATCH_HEARTBEAT", metavar="FILE",
              help="Touch FILE every second while capturing, for `dnswatch health` (default: $DNSWATCH_HEARTBEAT).")
def watch(interfaces, ports, netns_specs, all_netns, host_only, timeout, k8s_log_dir, debug, responses, db_path,
          no_db, retain, max_size, retain_rollups, write_path, as_json, json_format, metrics_listen, metrics_max_series,
          metrics_server_label, with_lookups, wide, duration, count, pids, comms, names, types, pods, pod_namespaces, containers, quiet,
          heartbeat_path) -> None:
    """Watch DNS queries live (needs root and bcc), storing them in the log.

    As root every network namespace is watched (containers' and pods' queries, with their process);
    --netns or --host-only narrow that. The filters (--pid --comm --name --type --pod --pod-namespace
    --container) choose what is shown and counted by --count: everything captured is stored.

    \b
    Examples:
      sudo dnswatch watch
      sudo dnswatch watch -i eth0 --responses
      sudo dnswatch watch --comm curl --json
      sudo dnswatch watch --pod-namespace shop -w shop.pcapng
      sudo dnswatch watch --responses --metrics :9553 --json-format ecs
    """
    from dnswatch.correlate import I_STATUS
    from dnswatch.enrich import Enricher
    from dnswatch.jsonlines import JsonLinesSink
    from dnswatch.metrics import HealthUpdater, MetricsError, MetricsServer, MetricsSink
    from dnswatch.pcapng import PcapngWriter, TeeCapture
    from dnswatch.sources.live import MAX_PORTS
    from dnswatch.watch import RowFilter, row_dict, run_watch

    ports = tuple(dict.fromkeys(ports)) or (53,)
    if len(ports) > MAX_PORTS:  # each port is a compare in the kernel filter, which has room for MAX_PORTS
        raise click.ClickException(
            f"{len(ports)} --port options: live capture filters at most {MAX_PORTS} DNS ports; drop some, or capture "
            "to a file (tcpdump -w) and replay it, which takes any number of --port")
    retention = _retention(retain, max_size, retain_rollups)
    as_json = as_json or json_format is not None
    if as_json and wide:
        raise click.UsageError("--wide is for text lines; --json lines are never truncated")
    try:
        types = check_mnemonics("--type", types, known_qtypes(), "TYPE")
    except SearchError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[1], param_hint="--type")
    try:
        names = [presentation(n, "--name") for n in names]  # as names are shown and stored: 'café' is caf\195\169
    except SearchError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[1], param_hint="--name")
    row_filter = RowFilter(pids=pids, comms=comms, names=names, types=types, pods=pods,
                           pod_namespaces=pod_namespaces, containers=containers)
    metrics = None
    if metrics_listen:
        try:
            metrics = MetricsServer(MetricsSink(metrics_max_series, server_label=metrics_server_label),
                                    metrics_listen)
            metrics.start()
        except MetricsError as exc:
            raise click.ClickException(str(exc))
    try:
        live = _Live(interfaces, ports, responses, netns_specs, all_netns, host_only, debug)
    except click.ClickException:
        if metrics is not None:
            metrics.close()
        raise
    enricher = Enricher(k8s_log_dir=k8s_log_dir)
    live.capture.on_task = enricher.process_names.name  # while the sender exists, not once the reorder window is past
    enricher.veth_peers.link_socket = live.capture.link_socket  # the pod at the other end of a node-side veth
    capture = live.capture
    if write_path:
        try:
            capture = TeeCapture(capture, PcapngWriter(write_path, enricher))
        except OSError as exc:
            live.capture.close()
            if metrics is not None:
                metrics.close()
            raise click.ClickException(f"{write_path}: cannot write ({exc.strerror})")
    try:
        store = _open_store(no_db, db_path, capture, retention)
    except click.ClickException:
        if metrics is not None:
            metrics.close()
        raise
    shown = {"n": 0}
    stop = StopSignals()
    out = ClosableOutput(sys.stdout, lambda: stop.request(OUTPUT_CLOSED))  # `watch | head` ends like --count
    formatter = EventFormatter(width=None if wide else _terminal_width(sys.stdout), colour=colour_enabled(sys.stdout),
                               where=live.label if live.all_netns else None, timeout=timeout)

    def show(kind: str, row) -> None:
        if not row_filter(row):
            return
        if kind == "Q":
            shown["n"] += 1
        if quiet or as_json:  # JSON lines come from the stored rows (a sink), once each row is complete
            return
        out.write(formatter.line(kind, row_dict(row)) + "\n")
        out.flush()

    def timeouts(row) -> None:
        if row[I_STATUS] == "unanswered":
            show("T", row)

    sinks = []  # they get every row the log stores; the filters only choose what is shown
    if responses and not as_json and not quiet:  # (quiet: no timeout lines; no sink, rows go straight to the log)
        sinks.append(timeouts)
    live.capture.on_process = enricher.processes.seen  # exe and parent, read while the sender exists
    if metrics is not None:
        sinks.append(metrics.sink)
    if as_json:  # -q too: it silences the text lines and notes, not the JSON a pipe asked for
        sinks.append(JsonLinesSink(out, json_format or "native", row_filter=row_filter if row_filter.active else None))
    stop.__enter__()  # from here on Ctrl-C, SIGTERM and SIGHUP end the capture cleanly
    silent = (quiet or as_json) and not row_filter.active  # no line printed, every query counted as shown

    def tally(row) -> None:
        shown["n"] += 1
    pipeline = Pipeline(store, "live", capture.describe(), ports, timeout,
                        options={"interfaces": list(interfaces), "responses": responses, "netns": list(netns_specs),
                                 "all_netns": live.all_netns, "write": write_path},
                        on_query=tally if silent else lambda row: show("Q", row),
                        on_response=(lambda row: show("R", row)) if responses and not silent else None,
                        enrich=capture.writer.enrich_row if write_path else enricher,  # -w: comments from the rows
                        expect_responses=responses, sinks=sinks,
                        lookups=responses if with_lookups is None else with_lookups)
    if pipeline.lookups is not None:
        pipeline.lookups.server_pod_of = enricher.server_pod
        if metrics is not None:
            pipeline.lookups.on_lookup = metrics.sink.lookup  # every lookup as it ends
    where = f", logging to {safe_text(store.path)}" if store else ", storing nothing (--no-db)"
    if write_path:
        where += f", packets to {safe_text(write_path)}"
    if metrics is not None:
        where += f", metrics on {metrics.url}"
    if not live.all_netns and not netns_specs:
        where += (" (this network namespace only: queries that other namespaces' clients send show no process "
                  "here; as root, leave out --host-only to watch every namespace)")
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
                            tracker=live.tracker(), stop=stop,
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
    stored = stored_text(summary.rows, store)
    if write_path:
        stored += f", {capture.writer.packets:,} packets written to {safe_text(write_path)}"
    click.echo(
        f"{summary.queries:,} queries, {summary.responses:,} responses, {summary.malformed:,} malformed, "
        f"{summary.dropped:,} lost ({losses_text(summary.losses)}), {summary.duplicates:,} duplicate copies, "
        f"{summary.retries:,} retries; {shown['n']:,} queries shown; {stored} in {summary.seconds:.1f}s",
        err=True,
    )
    if isinstance(error, StoreError):
        raise click.ClickException(str(error))
    if error is not None:
        raise error  # a bug: its traceback, after the capture was marked 'failed' and summarised


# -- top -----------------------------------------------------------------------------------------

@cli.command(short_help="Top names, domains, clients, pods: live or from a log.")
@capture_options
@db_option
@click.option("--no-db", is_flag=True, help="Live: do not store what is captured.")
@click.option("--since", help="Over the log from this time (10m, 2h, 1d ago, ISO time, Unix seconds).")
@click.option("--until", help="Over the log up to this time (same forms as --since).")
@click.option("--log", "whole_log", is_flag=True, help="Over the whole log (without --since/--until).")
@click.option("--by", type=click.Choice(GROUPS), default="name", show_default=True,
              help="Group by: query name, registered domain (public suffix list), client (pod, else process, "
                   "else address), process, pod, server, qtype or rcode; or lookup: each client's lookups (resolver "
                   "calls), their queries and those wasted on search-path expansions (sort count: most wasted).")
@click.option("--sort", type=click.Choice(SORTS_TOP), default="count", show_default=True, help="Order of the keys.")
@click.option("--reverse", is_flag=True, help="Reverse the order.")
@click.option("--filter", "key_filter", default="", metavar="TEXT", help="Only keys containing TEXT.")
@click.option("--limit", type=click.IntRange(0), default=20, show_default=True,
              help="Keys in a --once snapshot (0: all).")
@click.option("--once", is_flag=True,
              help="Print one snapshot and exit (also when stdout is not a terminal); live: after --duration.")
@click.option("--json", "as_json", is_flag=True, help="The snapshot as JSON (implies --once).")
@click.option("--duration", type=SECONDS, metavar="SECONDS", help="Live: stop after this many seconds (--once: 5).")
@click.option("--interval", type=click.FloatRange(0.2), default=1.0, show_default=True,
              help="Seconds between screen refreshes (over a log: re-reads).")
def top(interfaces, ports, netns_specs, all_netns, host_only, timeout, k8s_log_dir, debug, db_path, no_db, since,
        until, whole_log, by, sort, reverse, key_filter, limit, once, as_json, duration, interval) -> None:
    """Top names, domains, clients, processes, pods, servers, types, rcodes or lookups: rate, rcode mix, latency.

    Live (the default; needs root): captures queries and responses like `watch --responses`, storing them
    unless --no-db. Over a log: --since/--until (or --log for all of it), with --db.

    Over a window of two whole hours or more, those hours come from the hourly rollups (fast on a big log)
    and only the partial hours at both ends from raw rows, for --by name, domain, process, pod, qtype and
    rcode (client and server always read raw rows). The counts, NXDOMAIN, SERVFAIL and unanswered are exact;
    the rollups keep no latency distribution, so p50/p95/p99 show '-' and the last column is "max ms" (the
    largest latency); processes without a name count as '-' rather than "pid N".

    --by lookup ranks clients by the queries their search paths wasted (NXDOMAIN expansions before the answer):
    lookups, queries, wasted, unresolved lookups and the p95 of the lookups' total time. It reads the lookups
    table (raw, never rollups); live, a lookup counts once it ends (1 s after its last query, plus --timeout).

    On a terminal the view refreshes; keys: b group by, s sort, r reverse, / filter, p pause, q quit
    (1-9 pick a grouping). --once, --json, or a stdout that is not a terminal print one snapshot.

    \b
    Examples:
      sudo dnswatch top
      sudo dnswatch top --all-netns --by pod
      dnswatch top --db node.db --since 1h
      dnswatch top --db node.db --since 1d --once --by domain
      dnswatch top --db node.db --log --by lookup
    """
    from dnswatch.top import ROLLUP_GROUPS, TopStats, log_stats
    from dnswatch.topview import Interactive, TopScreen

    once = once or as_json or not sys.stdout.isatty() or not sys.stdin.isatty()  # keys need a terminal
    over_log = bool(since or until or whole_log)
    if over_log and (interfaces or netns_specs or all_netns or host_only or no_db):
        raise click.UsageError("capture options (-i, --netns, --all-netns, --host-only, --no-db) are for live top, "
                               "not over a log (--since/--until/--log)")

    if over_log:
        db = _open(db_path)
        try:
            window = (parse_time(since) if since else None, parse_time(until) if until else None)
            check_window(*window, since, until)
        except SearchError as exc:
            raise click.ClickException(str(exc))
        state = {}  # rollups or not -> (stats, when read)
        source = f"{db_path or default_db_path()}" + (f" since {since}" if since else "") + \
            (f" until {until}" if until else "")

        def stats(by):
            import time as _time

            rollups = by in ROLLUP_GROUPS  # client and server are not in the rollups: raw rows
            now = _time.monotonic()
            if rollups not in state or now - state[rollups][1] >= interval:
                lo = parse_time(since) if since else None  # relative times slide with the clock
                hi = parse_time(until) if until else None
                state[rollups] = (log_stats(db.conn, lo, hi, rollups=rollups), now)
            return state[rollups][0]

        def snapshot(**kw):
            return stats(kw.get("by", "name")).snapshot(source=source, **kw)

        if once:
            _print_top(snapshot(by=by, sort=sort, filter=key_filter, reverse=reverse, limit=limit), as_json)
            return
        screen = TopScreen(snapshot, by=by, sort=sort, filter=key_filter, reverse=reverse, interval=interval)
        with Interactive(screen) as ui:
            while ui.step(interval):
                pass
        return

    # live
    from dnswatch.enrich import Enricher
    from dnswatch.watch import run_watch

    ports = tuple(ports) or (53,)
    live = _Live(interfaces, ports, True, netns_specs, all_netns, host_only, debug, quiet=not once)
    stats = TopStats(live=True)
    enricher = Enricher(k8s_log_dir=k8s_log_dir)
    live.capture.on_task = enricher.process_names.name
    enricher.veth_peers.link_socket = live.capture.link_socket
    store = _open_store(no_db, db_path, live.capture)
    pipeline = Pipeline(store, "live", live.capture.describe(), ports, timeout,
                        options={"interfaces": list(interfaces), "responses": True, "netns": list(netns_specs),
                                 "all_netns": live.all_netns, "top": True},
                        enrich=enricher, expect_responses=True, sinks=(stats.add,), lookups=True)
    pipeline.lookups.on_lookup = stats.add_lookup  # --by lookup: each lookup as it ends
    source = "live" + (f", logging to {store.path}" if store else "")

    def snapshot(**kw):
        stats.losses = pipeline.counters().dropped
        return stats.snapshot(source=source, **kw)

    try:
        if once:
            click.echo(f"Collecting on {live.capture.describe()} for {duration or 5:g}s...", err=True)
            run_watch(live.capture, pipeline, duration=duration or 5.0, tracker=live.tracker())
            _print_top(snapshot(by=by, sort=sort, filter=key_filter, reverse=reverse, limit=limit), as_json)
            return
        screen = TopScreen(snapshot, by=by, sort=sort, filter=key_filter, reverse=reverse, interval=interval)
        with Interactive(screen) as ui:
            run_watch(live.capture, pipeline, duration=duration, tracker=live.tracker(),
                      on_tick=lambda: ui.step(0))
    except StoreError as exc:
        raise click.ClickException(str(exc))
    finally:
        if store is not None:
            store.close()


def _print_top(snap, as_json: bool) -> None:
    from rich.console import Console

    from dnswatch.topview import render

    if as_json:
        click.echo(json.dumps(snap.as_dict(), indent=2))
        return
    tty = sys.stdout.isatty()
    width = _terminal_width(sys.stdout) or int(os.environ.get("COLUMNS", "") or 120)
    console = Console(file=sys.stdout, width=width, force_terminal=tty and colour_enabled(sys.stdout),
                      no_color=not colour_enabled(sys.stdout), highlight=False, soft_wrap=False)
    console.print(render(snap, width))


@cli.command(short_help="Can this machine run live capture? What to fix.")
@db_option
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
def doctor(db_path: Optional[str], as_json: bool) -> None:
    """Can this machine run live capture? Each check says ok, or what to fix.

    --db also checks that log: that this user can read it and write it (an optional check)."""
    from dnswatch.doctor import REQUIRED, Check, ready, run_checks

    checks = run_checks()
    if db_path is not None:
        checks.append(_log_check(db_path, Check))
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


def _log_check(db_path: str, Check):
    """doctor --db: can this user read and write the log?"""
    name = "log"
    if not os.path.exists(db_path):
        folder = os.path.dirname(os.path.abspath(db_path))
        ok = os.access(folder, os.W_OK)
        return Check(name, ok, f"{db_path} does not exist yet; " + ("it can be created here" if ok else
                     f"{folder} is not writable"), "" if ok else "pass a --db in a folder you can write")
    problem = unreadable_log(db_path)
    if problem:
        return Check(name, False, problem, "see above")
    try:
        db = open_readonly(db_path)
        n = db.conn.execute("SELECT count(*) FROM queries").fetchone()[0]
        db.conn.close()
    except (StoreError, sqlite3.Error) as exc:
        return Check(name, False, f"{db_path}: {exc}", "pass another --db")
    writable = os.access(db_path, os.W_OK)
    return Check(name, True, f"{db_path}: {n:,} queries; " + ("writable" if writable else "read-only for this user"))


@cli.command(short_help="Liveness probe for a running watch (heartbeat).")
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
