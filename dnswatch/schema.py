"""The log's schema: every table and column with its meaning. ``dnswatch schema`` prints this, and
``store`` creates the tables from it, so the documentation cannot drift from the database."""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Tuple


class Column(NamedTuple):
    name: str
    type: str
    doc: str


class Index(NamedTuple):
    name: str
    columns: str
    where: str = ""  # a partial index: rows that do not match cost nothing


class Table(NamedTuple):
    name: str
    doc: str
    columns: Tuple[Column, ...]
    indexes: Tuple["Index", ...]



QUERIES = Table(
    "queries",
    "One row per DNS question: the query and, once matched, its response. A response whose query was not "
    "seen is a row too (status 'response_only').\n"
    "Matching: a response answers the waiting query with the same client and server address and port, transport, "
    "DNS id and question. Retries: a query sent again with the same addresses, ports, id and question while the "
    "first still waits is an attempt of the same question (attempts + 1, ts stays the first attempt's; the wait "
    "restarts from it), not a new row; once answered, the same id and question again is a new query (dnsperf and "
    "busy resolvers reuse ids at once). Without --responses (live) a retry cannot be told from such a new query: "
    "each is a row. Copies: the same bytes seen again within 50 ms at another capture point (another interface, "
    "namespace or direction; in files, where that is not recorded, any second sighting within 50 ms) are one "
    "packet, stored once and counted in captures.duplicates. A second response to a question already answered "
    "(the server answered a retry too) is counted in captures.notes.repeated_responses, not stored as a row.",
    (
        Column("id", "INTEGER PRIMARY KEY", "Row id."),
        Column("ts", "REAL", "When the query was seen, Unix seconds (the response's time for response_only rows)."),
        Column("capture_id", "INTEGER", "The capture this row came from: captures.id."),
        Column("src", "TEXT", "Client address (the query's source)."),
        Column("sport", "INTEGER", "Client port."),
        Column("dst", "TEXT", "Server address (the query's destination)."),
        Column("dport", "INTEGER", "Server port (53 unless --port said otherwise)."),
        Column("proto", "TEXT", "Transport: 'udp' or 'tcp'."),
        Column("dns_id", "INTEGER", "DNS message ID (0-65535)."),
        Column("qname", "TEXT COLLATE NOCASE",
               "Queried name in presentation form as sent: case kept, no trailing dot, the root as '.', bytes that are "
               "not printable ASCII as \\DDD (as tshark and dig show them). Compares case-insensitively."),
        Column("qtype", "TEXT", "Query type mnemonic: 'A', 'AAAA', 'HTTPS'... or 'TYPE65535' when unknown."),
        Column("qtype_num", "INTEGER", "Query type number (28 for AAAA)."),
        Column("qclass", "TEXT", "Query class: 'IN', 'CH', ... or 'CLASS<n>'."),
        Column("opcode", "TEXT", "Opcode: 'QUERY', 'NOTIFY', 'UPDATE', ..."),
        Column("status", "TEXT",
               "'answered' (response matched), 'unanswered' (no response within the timeout or before the capture "
               "ended), 'response_only' (a response whose query was not seen), 'query_only' (live capture without --responses: "
               "responses were not captured)."),
        Column("rcode", "TEXT", "Response code mnemonic ('NOERROR', 'NXDOMAIN', 'SERVFAIL', ...); NULL until answered."),
        Column("rcode_num", "INTEGER", "Response code number, with EDNS extended bits (3 for NXDOMAIN)."),
        Column("answers", "TEXT",
               "Answer section as JSON: a list of {name, type, ttl, data}. Search it with json_each(answers)."),
        Column("ancount", "INTEGER", "Answer count from the response header."),
        Column("latency_ms", "REAL",
               "Response time minus the time of the latest attempt sent before it, in milliseconds (what tshark "
               "reports as dns.time: a response to a retransmitted query is timed from the retransmission)."),
        Column("response_ts", "REAL", "When the response was seen, Unix seconds."),
        Column("attempts", "INTEGER",
               "How many times the client sent this query: 1, plus one per retransmission (same addresses, ports, "
               "transport, id and question, sent again before any response); 0 for response_only rows."),
        Column("first_attempt_latency_ms", "REAL",
               "Response time minus the first attempt's time (ts), in milliseconds: how long the client waited in "
               "all. Equals latency_ms when attempts = 1; NULL until answered."),
        Column("query_flags", "TEXT", "Header flags of the query, e.g. 'rd' or 'rd cd'."),
        Column("response_flags", "TEXT", "Header flags of the response, e.g. 'aa rd ra' ('tc' = truncated)."),
        Column("edns_udp_size", "INTEGER", "EDNS UDP payload size the client advertised; NULL without EDNS."),
        Column("edns_do", "INTEGER", "EDNS DO bit of the query (1 = DNSSEC records wanted); NULL without EDNS."),
        Column("ecs", "TEXT", "EDNS client subnet sent with the query, e.g. '198.18.5.0/24'."),
        Column("query_size", "INTEGER", "Size of the query message in bytes (DNS payload)."),
        Column("response_size", "INTEGER", "Size of the response message in bytes (DNS payload)."),
        Column("decoder", "TEXT",
               "'dnslib', or 'raw' when dnslib refused the message and the question was read from the wire bytes."),
        Column("decode_note", "TEXT", "Why the raw reader was needed, or a header/body mismatch (qdcount...)."),
        Column("ifname", "TEXT", "Interface the query was captured on (live; pcapng interface name from files)."),
        Column("lookup_id", "INTEGER",
               "The lookup (resolver call) this query belongs to: lookups.lookup_id (see the lookups table)."),
        Column("nat_dst", "TEXT",
               "Server address after NAT: when the same query was seen again on its way to another address (a "
               "service VIP DNATed to a server pod), that address; the copy is not stored as a row of its own."),
        Column("pid", "INTEGER", "Process id (thread group) that sent the query; live capture only, NULL from pcap "
               "and whenever the kernel could not know it (packets received in softirq)."),
        Column("tid", "INTEGER", "Thread id that sent the query (live)."),
        Column("comm", "TEXT", "Command name of the sending process, as ps shows it (live, at most 15 characters)."),
        Column("thread_name", "TEXT",
               "Name of the thread that sent it, as the kernel saw it (dig 9.18 sends from 'isc-net-0000') (live)."),
        Column("uid", "INTEGER", "User id of the sending process (live)."),
        Column("cgroup_id", "INTEGER", "cgroup v2 id of the sending process (live)."),
        Column("netns", "INTEGER", "Network namespace inode where the query was captured (live)."),
        Column("container_id", "TEXT", "Container id, from the sender's cgroup path (live)."),
        Column("container", "TEXT", "Container name (Kubernetes container name, from the kubelet's logs) (live)."),
        Column("pod", "TEXT", "Kubernetes pod name (live)."),
        Column("pod_namespace", "TEXT", "Kubernetes namespace of the pod (live)."),
        Column("pod_uid", "TEXT", "Kubernetes pod UID (live)."),
        Column("exe", "TEXT", "Executable path of the sending process (/proc/PID/exe), read once per process "
               "(pid and start time, so a reused pid never inherits it) (live)."),
        Column("ppid", "INTEGER", "Parent process id of the sender (live)."),
        Column("parent_comm", "TEXT", "Command name of the sender's parent process (live)."),
        Column("server_pod", "TEXT", "Pod of the server side when the query reached a server pod through NAT "
               "(nat_dst), from the copy seen in that pod's namespace (live)."),
        Column("server_pod_namespace", "TEXT", "Kubernetes namespace of server_pod (live)."),
    ),
    (
        Index("queries_ts", "ts"),
        Index("queries_qname", "qname"),
        Index("queries_pid", "pid, ts", "pid IS NOT NULL"),
        Index("queries_comm", "comm, ts", "comm IS NOT NULL"),
        Index("queries_pod", "pod_namespace, pod, ts", "pod IS NOT NULL"),
    ),
)

CAPTURES = Table(
    "captures",
    "One row per replay of a file or live capture session, with its counters (updated as it runs).",
    (
        Column("id", "INTEGER PRIMARY KEY", "Capture id (queries.capture_id)."),
        Column("kind", "TEXT", "'pcap' (replay of a file) or 'live'."),
        Column("source", "TEXT", "The file replayed, or the interfaces/namespaces watched."),
        Column("host", "TEXT", "Host name of the machine that made this row."),
        Column("started", "REAL", "Start, Unix seconds (wall clock when dnswatch started on it)."),
        Column("ended", "REAL", "End, Unix seconds; NULL while running or when the run was killed."),
        Column("status", "TEXT",
               "How the run ended: 'complete' (the end of the input, --duration or --count), 'damaged' (replay: "
               "the file is damaged or cut short; every frame before the damage is kept, notes.warnings says "
               "where), 'interrupted' (Ctrl-C, SIGTERM or SIGHUP: everything read until then is stored and "
               "counted), 'failed' (an error ended it: notes.error says which), or 'running': still going, or "
               "killed outright (SIGKILL, power loss; the counters are those of the last second)."),
        Column("first_ts", "REAL", "Time of the first frame in the capture."),
        Column("last_ts", "REAL", "Time of the last frame in the capture."),
        Column("frames", "INTEGER", "Frames read (pcap) or passed up by the kernel filter (live)."),
        Column("dns_messages", "INTEGER", "DNS messages found (queries, responses and malformed ones)."),
        Column("queries", "INTEGER", "DNS queries decoded."),
        Column("responses", "INTEGER", "DNS responses decoded."),
        Column("malformed", "INTEGER", "DNS messages that could not be read at all (see the malformed table)."),
        Column("dropped", "INTEGER",
               "Events lost, each counted once at the stage where it was lost: the sum of notes.losses."),
        Column("duplicates", "INTEGER",
               "Copies of a message seen again at another capture point within 50 ms (see queries), stored once."),
        Column("options", "TEXT", "Options of the run as JSON (ports, interfaces, timeout...)."),
        Column("notes", "TEXT",
               "JSON: counts of frames skipped by reason (frames), malformed messages by reason, warnings about "
               "damaged input, unanswered / response_only rows, retries (query attempts after the first), "
               "repeated_responses, and losses by stage: kernel_perf_buffer (live: events the per-CPU perf buffer "
               "had no room for), kernel_short_payload (live: DNS-port UDP payloads under 12 bytes, which the "
               "kernel drops and replay stores as malformed), kernel_too_many_questions (live: more than 16 "
               "questions), decode (captured frames whose DNS message could not be read: truncated headers, TCP "
               "messages cut off, fragments never completed), memory_bounds (fragments or TCP streams given up "
               "at a memory bound)."),
        Column("dnswatch_version", "TEXT", "Version of dnswatch that wrote this row."),
    ),
    (),
)

MALFORMED = Table(
    "malformed",
    "DNS messages (on a DNS port) that could not be read at all, kept with their bytes for inspection.",
    (
        Column("id", "INTEGER PRIMARY KEY", "Row id."),
        Column("capture_id", "INTEGER", "captures.id."),
        Column("ts", "REAL", "When it was seen, Unix seconds."),
        Column("src", "TEXT", "Source address."),
        Column("sport", "INTEGER", "Source port."),
        Column("dst", "TEXT", "Destination address."),
        Column("dport", "INTEGER", "Destination port."),
        Column("proto", "TEXT", "'udp' or 'tcp'."),
        Column("reason", "TEXT", "Why it could not be read (truncated header, compression loop, ...)."),
        Column("size", "INTEGER", "Message size in bytes."),
        Column("data", "BLOB", "The message bytes (DNS payload): the first 4,096 when size is larger "
               "(counted in captures.notes as malformed_data_truncated)."),
        Column("pid", "INTEGER", "Sending process (live, when known)."),
        Column("comm", "TEXT", "Sending command name (live, when known)."),
        Column("ifname", "TEXT", "Interface (live)."),
    ),
    (Index("malformed_capture", "capture_id"),),
)

LOOKUPS = Table(
    "lookups",
    "One row per lookup: the queries one resolver call made (queries.lookup_id), written when the lookup ends.\n"
    "Grouping rule: queries from one client (live: network namespace and process id; without a process, or in "
    "replay: the client address) join an open lookup when (a) they ask a name it already tried, for a query type "
    "not tried yet for that name (the A/AAAA pair; without a process, from the same client port, as glibc and musl "
    "send it), or again over TCP after a truncated (tc) answer, or again after "
    "no answer, SERVFAIL or REFUSED (a retry with a new id or to the next server); or (b) they ask another name "
    "sharing the lookup's leading labels (its asked name), sent after every earlier candidate came back without "
    "an answer (NXDOMAIN, or NOERROR with no records) and within 1 s of that response: the next search-path "
    "candidate. Retransmissions with the same id are attempts of one row already (queries.attempts). A lookup "
    "ends 1 s after its last activity plus the query timeout (one of its queries may still be unanswered); only "
    "a client's 4 most recent lookups can gain queries; a lookup also ends earlier when more than 50,000 are open "
    "(the oldest ends), and a lookup takes at most 64 queries.\n"
    "NAT copies: the same query (client address and port, id, question) seen again within 50 ms with another "
    "destination is one query: stored once with nat_dst and the server pod. Hops: a query for the same question "
    "sent by another client (the server, usually from the address the client asked or its nat_dst) while the "
    "client's query was pending is its upstream hop (upstream_*).\n"
    "Limits (what packets alone cannot tell): the search list and ndots are not seen, so a lookup answered at its "
    "first candidate has that candidate as asked_name (a short name that hit 'name.ns.svc.cluster.local' at once "
    "cannot be told from the full name asked); two names with the same leading labels asked one right after the "
    "other's NXDOMAIN look like one lookup; threads of one process resolving the same name at once share lookups; "
    "in replay, a client sending A and AAAA from two sockets (Go's own resolver) makes two lookups; "
    "in replay, clients behind one address (pods on a node NATed to it) are one client.",
    (
        Column("lookup_id", "INTEGER PRIMARY KEY", "Lookup id (queries.lookup_id): capture_id * 10^12 + n."),
        Column("capture_id", "INTEGER", "captures.id."),
        Column("ts", "REAL", "First query sent, Unix seconds."),
        Column("end_ts", "REAL", "Final response seen (the last query's time when none came), Unix seconds."),
        Column("src", "TEXT", "Client address (of the first query)."),
        Column("dst", "TEXT", "Server address the client asked (before NAT)."),
        Column("nat_dst", "TEXT", "Server address after NAT, when a NAT copy was seen."),
        Column("pid", "INTEGER", "Client process id (live)."),
        Column("comm", "TEXT", "Client command name (live)."),
        Column("exe", "TEXT", "Client executable path (live)."),
        Column("netns", "INTEGER", "Client network namespace inode (live)."),
        Column("pod", "TEXT", "Client pod (live)."),
        Column("pod_namespace", "TEXT", "Client pod's Kubernetes namespace (live)."),
        Column("container", "TEXT", "Client container (live)."),
        Column("server_pod", "TEXT", "Pod that served the lookup behind NAT (live)."),
        Column("server_pod_namespace", "TEXT", "Namespace of server_pod (live)."),
        Column("asked_name", "TEXT COLLATE NOCASE",
               "The name the application asked: the leading labels every candidate shares (the shortest name that "
               "explains the expansions); with one candidate, that name as sent."),
        Column("candidates", "TEXT", "Names tried, in the order first sent, as a JSON list."),
        Column("qtypes", "TEXT", "Query types asked, in the order first sent, as a JSON list ('A', 'AAAA')."),
        Column("answered_name", "TEXT COLLATE NOCASE", "First candidate answered NOERROR with records; NULL if none."),
        Column("rcode", "TEXT", "Final rcode: of the answered candidate, else of the last candidate's last response; "
               "NULL when nothing was answered."),
        Column("queries", "INTEGER", "Queries sent, retransmissions included (sum of queries.attempts)."),
        Column("wasted", "INTEGER", "Queries for candidates other than the final one (answered_name, else the last "
               "tried) that came back NXDOMAIN or empty: what the search path cost."),
        Column("tcp", "INTEGER", "1 when a truncated answer made the client ask again over TCP."),
        Column("total_ms", "REAL", "First query sent to final response, in milliseconds; NULL if none came."),
        Column("upstream_lookup_id", "INTEGER", "The server's own lookup forwarding this question upstream (hop)."),
        Column("upstream_server", "TEXT", "Address the server forwarded to."),
        Column("upstream_latency_ms", "REAL", "The upstream's response time, in milliseconds (of total_ms, the rest "
               "is the server's own time and the client's search path)."),
        Column("forwarded_for", "INTEGER", "On a server's lookup that forwarded a client's question upstream: the "
               "client's lookup_id (search --lookups shows the client's lookup, not this hop)."),
    ),
    (Index("lookups_ts", "ts"), Index("lookups_pod", "pod_namespace, pod, ts", "pod IS NOT NULL")),
)

TABLES = (QUERIES, CAPTURES, MALFORMED, LOOKUPS)

# Column order of the rows the pipeline builds (everything but the row id), and their positions.
QUERY_COLUMNS: List[str] = [c.name for c in QUERIES.columns if c.name != "id"]
Q: Dict[str, int] = {name: i for i, name in enumerate(QUERY_COLUMNS)}
# Columns only live capture fills come last, so rows from files can be inserted without them.
LIVE_ONLY_FROM = Q["pid"]
MALFORMED_COLUMNS: List[str] = [c.name for c in MALFORMED.columns if c.name != "id"]
LOOKUP_COLUMNS: List[str] = [c.name for c in LOOKUPS.columns]


def create_sql(table: Table) -> List[str]:
    cols = ",\n    ".join(f"[{c.name}] {c.type}" for c in table.columns)
    statements = [f"CREATE TABLE IF NOT EXISTS [{table.name}] (\n    {cols}\n)"]
    for index in table.indexes:
        where = f" WHERE {index.where}" if index.where else ""
        statements.append(f"CREATE INDEX IF NOT EXISTS [{index.name}] ON [{table.name}] ({index.columns}){where}")
    return statements


def describe() -> List[dict]:
    """Schema as data (for ``dnswatch schema --json``)."""
    return [
        {"table": t.name, "doc": t.doc, "columns": [{"name": c.name, "type": c.type, "doc": c.doc} for c in t.columns]}
        for t in TABLES
    ]
