"""The log's schema: every table and column with its meaning. ``dnswatch schema`` prints this, and
``store`` creates the tables from it, so the documentation cannot drift from the database."""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Tuple


class Column(NamedTuple):
    name: str
    type: str
    doc: str
    # How a queries column is stored (the ``queries`` view turns it back, so readers see no difference):
    #   ""         as is, in query_log
    #   "str"      an id into ``strings`` (texts repeated on many rows: client address, process and pod names)
    #   "shape"    in ``shapes``: the combination of these low-cardinality columns (server, type, rcode, flags...)
    #              is stored once and each row holds its id
    #   "sender"   in ``senders``, the same way: process, thread, user, cgroup, container and pod (live capture)
    #   "name"     an id into ``names``;  "answers": an id into ``answer_sets``
    #   "ms"       milliseconds with 3 decimals as integer microseconds;  "after_ts": a time just after ts, as
    #              integer microseconds after it (both only when that gives back the same float, else as is)
    # A new column: add a Column line (store "" or "str" for per-row values, "shape" for a handful of values,
    # "sender" for what identifies the sending process);
    # opening an existing log adds it (store/layout.prepare).
    store: str = ""


class Index(NamedTuple):
    name: str
    columns: str
    where: str = ""  # a partial index: rows that do not match cost nothing


class Table(NamedTuple):
    name: str
    doc: str
    columns: Tuple[Column, ...]
    indexes: Tuple["Index", ...]
    key: str = ""  # a PRIMARY KEY (...) clause: the table is then WITHOUT ROWID, ordered by that key



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
    "(the server answered a retry too) is counted in captures.notes.repeated_responses, not stored as a row.\n"
    "Stored as a view over the query_log table, which keeps repeated values once and refers to them by id "
    "(names, strings, shapes, senders, answer_sets).",
    (
        Column("id", "INTEGER PRIMARY KEY", "Row id."),
        Column("ts", "REAL", "When the query was seen, Unix seconds (the response's time for response_only rows)."),
        Column("capture_id", "INTEGER", "The capture this row came from: captures.id."),
        Column("src", "TEXT", "Client address (the query's source; IPv6 in RFC 5952 form, as answers).", store="str"),
        Column("sport", "INTEGER", "Client port."),
        Column("dst", "TEXT", "Server address (the query's destination).", store="shape"),
        Column("dport", "INTEGER", "Server port (53 unless --port said otherwise).", store="shape"),
        Column("proto", "TEXT", "Transport: 'udp' or 'tcp'.", store="shape"),
        Column("dns_id", "INTEGER", "DNS message ID (0-65535)."),
        Column("qname", "TEXT COLLATE NOCASE",
               "Queried name in presentation form as sent: case kept, no trailing dot, the root as '.', bytes that are "
               "not printable ASCII as \\DDD (as tshark and dig show them). Compares case-insensitively.", store="name"),
        Column("qtype", "TEXT", "Query type mnemonic: 'A', 'AAAA', 'HTTPS'... or 'TYPE65535' when unknown.", store="shape"),
        Column("qtype_num", "INTEGER", "Query type number (28 for AAAA).", store="shape"),
        Column("qclass", "TEXT", "Query class: 'IN', 'CH', ... or 'CLASS<n>'.", store="shape"),
        Column("opcode", "TEXT", "Opcode: 'QUERY', 'NOTIFY', 'UPDATE', ...", store="shape"),
        Column("status", "TEXT",
               "'answered' (response matched), 'unanswered' (no response within the timeout or before the capture "
               "ended), 'response_only' (a response whose query was not seen), 'query_only' (live capture without --responses: "
               "responses were not captured).", store="shape"),
        Column("rcode", "TEXT", "Response code mnemonic ('NOERROR', 'NXDOMAIN', 'SERVFAIL', ...); NULL until answered.", store="shape"),
        Column("rcode_num", "INTEGER", "Response code number, with EDNS extended bits (3 for NXDOMAIN).", store="shape"),
        Column("answers", "TEXT",
               "Answer section as JSON: a list of {name, type, ttl, data}. Search it with json_each(answers). 'name' "
               "is written as qname is; 'data' is the rdata in presentation form as dig prints it: addresses as "
               "text (IPv6 as inet_ntop writes it, RFC 5952: '1:0:0:2::3', '::ffff:198.18.0.1'; src, dst and ecs "
               "too); domain names inside rdata (CNAME, PTR, NS, DNAME, MX, SRV, SOA, NAPTR, SVCB/HTTPS targets...) "
               "exactly as qname is written (same \\DDD escapes, no trailing dot, the root as '.'), e.g. "
               "'10 mail.example.test' for MX; TXT and SPF as quoted strings separated by one space, with \\\" "
               "\\\\ and decimal \\DDD escapes ('\"v=spf1 -all\" \"a\\\"b\"'); types with no text form "
               "in the RFC 3597 form '\\# <length> <HEX>'. At most 2048 records of a message are read.", store="answers"),
        Column("ancount", "INTEGER", "Answer count from the response header."),
        Column("latency_ms", "REAL",
               "Response time minus the time of the latest attempt sent before it, in milliseconds: the server's "
               "answer to the attempt it answered (a client retries because the earlier answer did not come; "
               "identical attempts cannot be told apart on the wire, so the latest one is taken).", store="ms"),
        Column("response_ts", "REAL", "When the response was seen, Unix seconds.", store="after_ts"),
        Column("attempts", "INTEGER",
               "How many times the client sent this query: 1, plus one per retransmission (same addresses, ports, "
               "transport, id and question, sent again before any response); 0 for response_only rows."),
        Column("first_attempt_latency_ms", "REAL",
               "Response time minus the first attempt's time (ts), in milliseconds: how long the client waited in "
               "all. Equals latency_ms when attempts = 1; NULL until answered. tshark 4.0 reports this one as "
               "dns.time: it links the response to the first request and flags later attempts dns.retransmission.", store="ms"),
        Column("query_flags", "TEXT", "Header flags of the query, e.g. 'rd' or 'rd cd'.", store="shape"),
        Column("response_flags", "TEXT", "Header flags of the response, e.g. 'aa rd ra' ('tc' = truncated).", store="shape"),
        Column("edns_udp_size", "INTEGER", "EDNS UDP payload size the client advertised; NULL without EDNS.", store="shape"),
        Column("edns_do", "INTEGER", "EDNS DO bit of the query (1 = DNSSEC records wanted); NULL without EDNS.", store="shape"),
        Column("ecs", "TEXT", "EDNS client subnet sent with the query, e.g. '198.18.5.0/24'."),
        Column("query_size", "INTEGER", "Size of the query message in bytes (DNS payload)."),
        Column("response_size", "INTEGER", "Size of the response message in bytes (DNS payload)."),
        Column("decoder", "TEXT",
               "'dnslib': a well-formed message, read by dnslib or by dnswatch's equivalent fast reader (the same result); "
               "'raw' when dnslib refused the message and the question was read from the wire bytes.", store="shape"),
        Column("decode_note", "TEXT",
               "Why the raw reader was needed, or a header/body mismatch (qdcount...). A message with more than 16 "
               "questions gives rows for the first 16 only and says here how many were not recorded."),
        Column("ifname", "TEXT", "Interface the query was captured on (live; pcapng interface name from files).", store="shape"),
        Column("lookup_id", "INTEGER",
               "The lookup (resolver call) this query belongs to: lookups.lookup_id (see the lookups table)."),
        Column("nat_dst", "TEXT",
               "Server address after NAT: when the same query was seen again on its way to another address (a "
               "service VIP DNATed to a server pod), that address; the copy is not stored as a row of its own.", store="str"),
        Column("pid", "INTEGER", "Process id (thread group) that sent the query; live capture only, NULL from pcap "
               "and whenever the kernel could not know it (packets received in softirq).", store="sender"),
        Column("tid", "INTEGER", "Thread id that sent the query (live).", store="sender"),
        Column("comm", "TEXT", "Command name of the sending process, as ps shows it (live, at most 15 characters).", store="sender"),
        Column("thread_name", "TEXT",
               "Name of the thread that sent it, as the kernel saw it (dig 9.18 sends from 'isc-net-0000') (live).", store="sender"),
        Column("uid", "INTEGER", "User id of the sending process (live).", store="sender"),
        Column("cgroup_id", "INTEGER", "cgroup v2 id of the sending process (live).", store="sender"),
        Column("netns", "INTEGER", "Network namespace inode where the query was captured (live).", store="sender"),
        Column("container_id", "TEXT", "Container id, from the sender's cgroup path (live).", store="sender"),
        Column("container", "TEXT", "Container name (Kubernetes container name, from the kubelet's logs) (live).", store="sender"),
        Column("pod", "TEXT", "Kubernetes pod name (live).", store="sender"),
        Column("pod_namespace", "TEXT", "Kubernetes namespace of the pod (live).", store="sender"),
        Column("pod_uid", "TEXT", "Kubernetes pod UID (live).", store="sender"),
        Column("pod_via", "TEXT",
               "How container and pod were found (live): 'cgroup' (the sending process's cgroup), 'netns' (a "
               "process of the pod's network namespace, for packets the kernel saw in softirq), 'veth' (seen only "
               "on the node side of a pod's veth, its namespace not picked up yet: the pod owning the namespace at "
               "the other end of the veth it came in on; a veth from a namespace holding no pod gives no pod, "
               "whatever the address) or 'address' (the pod holding the source address, when it came in on no "
               "veth, e.g. through a bridge). NULL when no container or pod was found.", store="sender"),
        Column("exe", "TEXT", "Executable path of the sending process (/proc/PID/exe), read once per process "
               "(pid and start time, so a reused pid never inherits it) while the process runs: empty for one that "
               "exited before watch read its first query (live).", store="sender"),
        Column("ppid", "INTEGER", "Parent process id of the sender (live).", store="sender"),
        Column("parent_comm", "TEXT", "Command name of the sender's parent process (live).", store="sender"),
        Column("server_pod", "TEXT", "Pod of the server side when the query reached a server pod through NAT "
               "(nat_dst), from the copy seen in that pod's namespace (live).", store="str"),
        Column("server_pod_namespace", "TEXT", "Kubernetes namespace of server_pod (live).", store="str"),
    ),
    (
        # query_log is ordered by (ts, id) (WITHOUT ROWID), so every index also ends with ts: one name or one
        # sender is read newest first straight from its index, and a time window is a range of the table itself
        Index("log_qname", "qname"),
        Index("log_sender", "sender", "sender IS NOT NULL"),
    ),
)

CAPTURES = Table(
    "captures",
    "One row per replay of a file, live capture session or prune run (kind 'prune'), with its counters "
    "(updated as it runs).",
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
               "Events lost, each counted once at the stage where it was lost: the sum of notes.losses. A gap in a "
               "TCP stream (a segment never captured) is a decode loss, never a memory bound."),
        Column("duplicates", "INTEGER",
               "Copies of a message seen again at another capture point within 50 ms (see queries), stored once. "
               "Live, most never reach user space: the kernel drops them (docs/keep-contract.md, rule 6) and they "
               "are counted here too."),
        Column("options", "TEXT", "Options of the run as JSON (ports, interfaces, timeout...)."),
        Column("notes", "TEXT",
               "JSON: counts of frames skipped by reason (frames), malformed messages by reason, warnings about "
               "damaged input, unanswered / response_only rows, retries (query attempts after the first), "
               "repeated_responses, and losses by stage: kernel_perf_buffer (live: records the kernel's ring buffers "
               "refused; the name is from the perf buffers they replaced), kernel_short_payload (live: DNS-port UDP payloads under 12 bytes, which the "
               "kernel drops and replay stores as malformed), kernel_too_many_questions (live: more than 16 "
               "questions), decode (captured frames whose DNS message could not be read: truncated headers, TCP "
               "messages cut off, fragments never completed), memory_bounds (fragments, TCP streams or waiting "
               "queries given up at a memory bound). TCP, in frames: tcp_gaps (holes in a stream: segments never "
               "captured; reading resumes at the next plausible message, a length prefix followed by a sane DNS "
               "header and question), "
               "tcp_gap_bytes (bytes missing in them), tcp_resync_skipped_bytes (bytes passed over to get back in "
               "step: the message a gap cut, or the start of a stream whose SYN was not captured), "
               "tcp_out_of_order_bound (holes declared a gap early because the out-of-order buffer was full: 64 "
               "segments or 128 KB per stream, 32 MB over all streams; a memory bound), tcp_retransmissions, "
               "tcp_incomplete_messages. lost_responses: how many of a stage's losses were responses, where the "
               "stage knows (kernel_perf_buffer)."),
        Column("dnswatch_version", "TEXT", "Version of dnswatch that wrote this row."),
        Column("unstored", "INTEGER",
               "Rows and malformed messages that could not be stored (disk full); they were still counted and shown."),
        Column("pruned_rows", "INTEGER", "Rows this run deleted for retention (--retain, --max-size; kind 'prune')."),
        Column("pruned_before", "REAL", "This run pruned every query row older than this time (Unix seconds)."),
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
    "One row per lookup: the queries one resolver call made (queries.lookup_id). A view: lookups of two queries "
    "or more, or with a hop, are stored (in lookup_groups) when they end; a lookup of one query with no hop is "
    "read from its queries row (asked_name = answered name = qname, wasted 0), so it costs nothing to store. "
    "While a lookup is still open (live, up to 1 s plus the timeout after its last query) each of its queries "
    "shows as a lookup of its own. A response whose query was not seen (a response_only row) makes no lookup of "
    "its own: nobody is known to have waited for it and nothing was timed, so a lookup has queries >= 1 (such a "
    "row's lookup_id then names no lookups row; one that joined a lookup of real queries adds 0 to its queries).\n"
    "Grouping rule: queries from one client (live: network namespace and process id; without a process, or in "
    "replay: the client address) join an open lookup when (a) they ask a name it already tried, for a query type "
    "not tried yet for that name (the A/AAAA pair; without a process, from the same client port, as glibc and musl "
    "send it), or again over TCP after a truncated (tc) answer, or again after "
    "no answer, SERVFAIL or REFUSED (a retry with a new id or to the next server); or (b) they ask another name "
    "sharing the lookup's leading labels (its asked name), sent after every earlier candidate came back without "
    "an answer (NXDOMAIN, or NOERROR with no records) and within 1 s of that response: the next search-path "
    "candidate. Retransmissions with the same id are attempts of one row already (queries.attempts). A lookup "
    "ends 1 s after its last activity plus the query timeout (one of its queries may still be unanswered; live "
    "without --responses, where only queries are seen, candidates follow within 0.25 s of the last query and a "
    "lookup ends 0.25 s after it); only a client's 4 most recent lookups can gain queries; a lookup also ends "
    "earlier when the open ones take more than 48 MiB (the oldest end; captures.notes lookups_bounded counts "
    "them), and a lookup takes at most 64 queries.\n"
    "NAT copies: the same query (client address and port, id, question) seen again within 50 ms with another "
    "destination is one query: stored once with nat_dst and the server pod (each row waits 0.1 s of capture "
    "time for its copy, live 50 ms). Hops: a query for the same question "
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

SHAPE_COLUMNS: Tuple[Column, ...] = tuple(c for c in QUERIES.columns if c.store == "shape")
SENDER_COLUMNS: Tuple[Column, ...] = tuple(c for c in QUERIES.columns if c.store == "sender")


def _combo_table(name: str, columns: Tuple[Column, ...], doc: str) -> Table:
    return Table(
        name, doc,
        (Column("id", "INTEGER PRIMARY KEY", f"Id (query_log.{name[:-1]})."),
         Column("hash", "INTEGER", "64-bit hash of the values, the lookup key."))
        + tuple(Column(c.name, c.type.split()[0], f"As queries.{c.name}.") for c in columns),
        (Index(f"{name}_hash", "hash"),),
    )


SHAPES = _combo_table(
    "shapes", SHAPE_COLUMNS,
    "The combinations of the queries columns that take a handful of values (server, port, transport, type, class, "
    "opcode, status, rcode, flags, EDNS, decoder, interface), each stored once; query_log.shape is its id.")
SENDERS = _combo_table(
    "senders", SENDER_COLUMNS,
    "Who sent queries (live capture): each combination of process, thread, user, cgroup, namespace, container and "
    "pod stored once; query_log.sender is its id (NULL for rows from files). Search by pid, process name or pod "
    "finds the senders here, then their rows through one index. Retention deletes a sender once no kept row "
    "refers to it.")
COMBOS = {"shape": SHAPES, "sender": SENDERS}  # Column.store -> the table holding those columns

META = Table(
    "meta",
    "Bookkeeping of the writer: 'next_id' (the next query_log id), 'aggregated_id' (rows below it are in the "
    "rollups, key_hours and passive_dns; a writer that was killed leaves the rest, which the next one adds; "
    "retention never deletes the rows above it), 'gc_epoch' (counts the retention steps that deleted dictionary "
    "entries: a writer whose cached ids are older forgets them), 'aggregates_partial_before' (--max-size deleted "
    "rollups and key_hours of hours before this one while raw rows still covered them: readers count those hours "
    "from the raw rows).",
    (
        Column("key", "TEXT", "Name."),
        Column("value", "INTEGER", "Value."),
    ),
    (),
    key="key",
)

STRINGS = Table(
    "strings",
    "Short texts repeated on many rows (addresses, mnemonics, process, container and pod names), each stored "
    "once; query_log and rollups_hourly hold their ids.",
    (
        Column("id", "INTEGER PRIMARY KEY", "Id."),
        Column("s", "TEXT UNIQUE", "The text."),
    ),
    (),
)

NAMES = Table(
    "names",
    "Every query name, stored once (query_log.qname and the rollups hold its id). Retention deletes a name once "
    "no kept row, key_hours entry or rollup refers to it (ids are not reused).",
    (
        Column("id", "INTEGER PRIMARY KEY", "Id."),
        Column("name", "TEXT UNIQUE", "The name as in queries.qname (case kept)."),
        Column("rname", "TEXT",
               "The name lower-cased with its labels reversed ('com.example.www'): example.com and every name under "
               "it are one range of the index, which is how `search example.com` finds them without a scan."),
    ),
    (Index("names_rname", "rname"),),
)

ANSWER_SETS = Table(
    "answer_sets",
    "Answer sections (queries.answers), each distinct one stored once. Retention deletes a set (and its "
    "answer_items) once no kept row holds it.",
    (
        Column("id", "INTEGER PRIMARY KEY", "Id (query_log.answers)."),
        Column("hash", "INTEGER", "64-bit hash of answers, the lookup key."),
        Column("answers", "TEXT", "JSON, as queries.answers shows it."),
    ),
    (Index("answer_sets_hash", "hash"),),
)

ANSWER_ITEMS = Table(
    "answer_items",
    "For each answer value, the answer sets that hold it and the names they answered: `search --answer` over "
    "the raw rows reads this, not every row's JSON.",
    (
        Column("data", "TEXT", "An answer's data, as in answers[].data."),
        Column("set_id", "INTEGER", "answer_sets.id."),
        Column("qname", "INTEGER", "names.id of a query name answered with that set."),
    ),
    (),
    key="data, set_id, qname",
)

ROLLUPS = Table(
    "rollups_hourly",
    "Hourly counts, filled as rows are written and kept longer than raw rows (--retain-rollups; --max-size may "
    "take the oldest hours earlier, see meta.aggregates_partial_before): one row per "
    "hour, name, type, rcode, process name, pod namespace and pod. qname is a names.id, the others strings.id "
    "(0: none); the `rollups` view shows the texts.",
    (
        Column("hour", "INTEGER", "Start of the hour, Unix seconds."),
        Column("qname", "INTEGER", "names.id."),
        Column("qtype", "INTEGER", "strings.id of the type mnemonic."),
        Column("rcode", "INTEGER", "strings.id of the rcode (0: unanswered)."),
        Column("comm", "INTEGER", "strings.id of the process name (0: unknown)."),
        Column("pod_namespace", "INTEGER", "strings.id of the pod's namespace (0: none)."),
        Column("pod", "INTEGER", "strings.id of the pod (0: none)."),
        Column("count", "INTEGER", "Rows (questions)."),
        Column("unanswered", "INTEGER", "Rows with status 'unanswered'."),
        Column("answered", "INTEGER", "Rows with a latency (the divisor of latency_sum)."),
        Column("latency_sum", "REAL", "Sum of latency_ms."),
        Column("latency_max", "REAL", "Largest latency_ms."),
    ),
    (),
    key="hour, qname, qtype, rcode, comm, pod_namespace, pod",
)

# key_hours.kind: one hourly count per value of each of these columns (aggregate.top reads them)
KEY_KINDS: Dict[str, int] = {"qname": 1, "comm": 2, "pod": 3, "pod_namespace": 4, "rcode": 5, "qtype": 6, "src": 7}

KEY_HOURS = Table(
    "key_hours",
    "Hourly counts per single value of a column (name, process name, pod, ...), filled as rows are written: "
    "what `top` over long windows reads (aggregate.py).",
    (
        Column("kind", "INTEGER", "Which column: " + ", ".join(f"{v} {k}" for k, v in KEY_KINDS.items()) + "."),
        Column("key", "INTEGER", "names.id for qname, strings.id for the others."),
        Column("hour", "INTEGER", "Start of the hour, Unix seconds."),
        Column("n", "INTEGER", "Rows in that hour."),
    ),
    (Index("key_hours_top", "kind, hour, n"),),
    key="kind, key, hour",
)

PASSIVE_DNS = Table(
    "passive_dns",
    "Passive DNS: every (name, type, answer data) seen in a response, with when and how often, and who first "
    "resolved it. With retention on, an entry goes once it was last seen before the oldest rollup hour kept "
    "(--retain-rollups, or earlier under --max-size); `search --answer` reads it for the time the "
    "raw rows no longer cover.",
    (
        Column("name", "TEXT", "Owner name of the answer record."),
        Column("type", "TEXT", "Record type ('A', 'CNAME', ...)."),
        Column("data", "TEXT", "Record data, as in answers[].data."),
        Column("first_seen", "REAL", "First response holding it (query time), Unix seconds."),
        Column("last_seen", "REAL", "Last response holding it, Unix seconds."),
        Column("count", "INTEGER", "Rows whose answers held it."),
        Column("first_qname", "TEXT", "The question that first got it."),
        Column("first_src", "TEXT", "Client that first got it."),
        Column("first_pid", "INTEGER", "Process that first got it (live)."),
        Column("first_comm", "TEXT", "Its command name (live)."),
        Column("first_pod_namespace", "TEXT", "Its pod's namespace (live)."),
        Column("first_pod", "TEXT", "Its pod (live)."),
    ),
    (Index("passive_dns_data", "data"), Index("passive_dns_seen", "last_seen")),
    key="name, type, data",
)

# Documented (dnswatch schema) in this order; ``queries`` is a view over LOG_TABLE.
TABLES = (QUERIES, CAPTURES, MALFORMED, LOOKUPS, PASSIVE_DNS, ROLLUPS, KEY_HOURS, NAMES, STRINGS, SHAPES, SENDERS,
          ANSWER_SETS, ANSWER_ITEMS, META)
LOG_TABLE = "query_log"
# PRAGMA user_version of a log in this layout. Columns added to a table's definition need no new version: opening
# a log adds what is missing. Bump it only for changes that need code in store.migrate.
SCHEMA_VERSION = 3  # 3: the lookups view leaves out lookups of no query

# Column order of the rows the pipeline builds (everything but the row id), and their positions.
QUERY_COLUMNS: List[str] = [c.name for c in QUERIES.columns if c.name != "id"]
Q: Dict[str, int] = {name: i for i, name in enumerate(QUERY_COLUMNS)}
# Columns only live capture fills come last, so rows from files can be inserted without them.
LIVE_ONLY_FROM = Q["pid"]
MALFORMED_COLUMNS: List[str] = [c.name for c in MALFORMED.columns if c.name != "id"]
# positions in a row of the columns by how they are stored
STORED_AS: Dict[str, List[int]] = {
    kind: [Q[c.name] for c in QUERIES.columns if c.store == kind]
    for kind in ("str", "name", "answers", "shape", "sender", "ms", "after_ts")
}
# query_log's columns: every queries column not in a combination table, then the combinations' ids
LOG_COLUMNS: List[Column] = [c for c in QUERIES.columns if c.store not in COMBOS] + [
    Column(kind, "INTEGER", f"{table.name}.id") for kind, table in COMBOS.items()]


def stored_type(column: Column) -> str:
    if column.name == "id":
        return "INTEGER NOT NULL"
    if column.name == "ts":
        return "REAL NOT NULL"
    if column.store in ("ms", "after_ts"):
        return ""  # no affinity: an integer and a float stay what they are (the view tells them apart)
    return "INTEGER" if column.store else column.type.split()[0]


def column_expr(column: Column, alias: str = "l") -> str:
    """The SQL that reads ``column`` of the queries view from query_log row ``alias``."""
    ref = f"{alias}.[{column.name}]"
    if column.store == "str":
        return f"(SELECT s FROM strings WHERE id = {ref})"
    if column.store in COMBOS:
        return f"(SELECT [{column.name}] FROM {COMBOS[column.store].name} WHERE id = {alias}.{column.store})"
    if column.store == "name":
        return f"(SELECT name FROM names WHERE id = {ref}) COLLATE NOCASE"
    if column.store == "answers":
        return f"(SELECT answers FROM answer_sets WHERE id = {ref})"
    if column.store == "ms":
        return f"CASE WHEN typeof({ref}) = 'integer' THEN {ref} / 1000.0 ELSE {ref} END"
    if column.store == "after_ts":
        return f"CASE WHEN typeof({ref}) = 'integer' THEN {alias}.ts + {ref} / 1000000.0 ELSE {ref} END"
    return ref


# lookups of one query with no hop are not stored: the lookups view reads them from their queries row
_PLAIN_LOOKUP = {
    "ts": "q.ts", "end_ts": "coalesce(q.response_ts, q.ts)", "asked_name": "q.qname",
    "candidates": "json_array(q.qname)", "qtypes": "json_array(q.qtype)",
    "answered_name": "CASE WHEN q.rcode = 'NOERROR' AND q.ancount > 0 THEN q.qname END", "queries": "q.attempts",
    "wasted": "0", "tcp": "(' ' || coalesce(q.response_flags, '') || ' ') LIKE '% tc %'",
    "total_ms": "round((q.response_ts - q.ts) * 1000.0, 3)", "upstream_lookup_id": "NULL",
    "upstream_server": "NULL", "upstream_latency_ms": "NULL", "forwarded_for": "NULL",
}
LOOKUP_TABLE = "lookup_groups"


def view_sql() -> List[str]:
    """The views: ``queries`` (the column contract, over query_log), ``rollups`` (texts for the ids) and
    ``lookups`` (the stored lookups, and those of one query from their queries row)."""
    stored = ", ".join(f"g.[{c.name}]" for c in LOOKUPS.columns)
    plain = ",\n    ".join(f"{_PLAIN_LOOKUP.get(c.name, f'q.[{c.name}]')} AS [{c.name}]" for c in LOOKUPS.columns)
    cols = ",\n    ".join(f"{column_expr(c)} AS [{c.name}]" for c in QUERIES.columns)
    rollup_cols = ",\n    ".join(
        "(SELECT name FROM names WHERE id = r.qname) AS qname" if c.name == "qname" else
        f"(SELECT s FROM strings WHERE id = r.[{c.name}]) AS [{c.name}]"
        if c.name in ("qtype", "rcode", "comm", "pod_namespace", "pod") else f"r.[{c.name}]" for c in ROLLUPS.columns)
    return [
        f"CREATE VIEW IF NOT EXISTS queries AS SELECT\n    {cols}\nFROM {LOG_TABLE} l",
        f"CREATE VIEW IF NOT EXISTS rollups AS SELECT\n    {rollup_cols}\nFROM {ROLLUPS.name} r",
        # (a response whose query was not seen makes no lookup: queries > 0, attempts > 0)
        f"CREATE VIEW IF NOT EXISTS lookups AS SELECT {stored} FROM {LOOKUP_TABLE} g WHERE g.queries > 0\n"
        f"UNION ALL SELECT\n    {plain}\nFROM queries q WHERE q.lookup_id IS NOT NULL AND q.attempts > 0 AND NOT "
        f"EXISTS (SELECT 1 FROM {LOOKUP_TABLE} s WHERE s.lookup_id = q.lookup_id)",
    ]


def physical(table: Table) -> Tuple[str, List[Column]]:
    """The stored table behind ``table`` and its columns (for queries: query_log)."""
    if table is QUERIES:
        return LOG_TABLE, LOG_COLUMNS
    if table is LOOKUPS:
        return LOOKUP_TABLE, list(table.columns)
    return table.name, list(table.columns)
LOOKUP_COLUMNS: List[str] = [c.name for c in LOOKUPS.columns]


def create_sql(table: Table) -> List[str]:
    """CREATE statements of ``table`` (for ``queries``: the query_log table, its indexes and the views)."""
    name, columns = physical(table)
    cols = ",\n    ".join(f"[{c.name}] {stored_type(c) if table is QUERIES else c.type}".rstrip() for c in columns)
    key = "ts, id" if table is QUERIES else table.key
    tail = ""
    if key:
        cols += f",\n    PRIMARY KEY ({key})"
        tail = " WITHOUT ROWID"
    statements = [f"CREATE TABLE IF NOT EXISTS [{name}] (\n    {cols}\n){tail}"]
    for index in table.indexes:
        where = f" WHERE {index.where}" if index.where else ""
        statements.append(f"CREATE INDEX IF NOT EXISTS [{index.name}] ON [{name}] ({index.columns}){where}")
    if table is QUERIES:
        statements += view_sql()
    return statements


def describe() -> List[dict]:
    """Schema as data (for ``dnswatch schema --json``)."""
    return [
        {"table": t.name, "kind": "view" if t in (QUERIES, LOOKUPS) else "table", "doc": t.doc,
         "columns": [{"name": c.name, "type": c.type, "doc": c.doc} for c in t.columns]}
        for t in TABLES
    ]


def reverse_name(name: str) -> str:
    """names.rname: lower-cased, labels reversed ('WWW.Example.com' -> 'com.example.www'; the root is '')."""
    return ".".join(reversed(name.lower().rstrip(".").split(".")))
