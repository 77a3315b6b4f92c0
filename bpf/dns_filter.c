/* dnswatch kernel side: a BPF_PROG_TYPE_SOCKET_FILTER (bcc dialect) that finds DNS
 * messages and sends them to user space. The rule it implements is docs/keep-contract.md.
 *
 * RETURN CONTRACT: dns_filter() always returns 0 ("queue nothing on the socket").
 *   A kept packet is delivered as ONE record on ONE ring buffer: the ring of the CPU it runs on,
 *   rings[cpu % RINGS] (an array of RINGS ring buffers of RING_PAGES pages; `events` is ring 0
 *   and the others' template, user space creates and inserts the rest before attaching). Each
 *   ring has one writer CPU, so no two CPUs contend for a ring's lock (kernels from 6.15 take
 *   it with a resilient spinlock, and under cross-CPU contention bpf_ringbuf_output() was
 *   refused at once with the shared ring nearly empty), and a ring's records are in
 *   kernel-time order. Only when its own ring refuses (full) does a record go to the next
 *   ring (RING_SPILL of them, so one busy CPU still has the other rings' room; that ring's
 *   order is then nearly kernel-time order). User space reads every ring in batches from its
 *   own mmap of each and merges them by kernel time. A record is struct event_meta followed
 *   by the first meta.cap_len bytes of the packet from skb->data, copied through a per-CPU
 *   scratch slot (bpf_ringbuf_reserve wants a constant size). Since nothing is ever queued on
 *   the raw socket, a full socket buffer cannot drop anything; the only loss is a record every
 *   ring it tried refused. CNT_EMIT_FAIL counts each such record once (the rings keep no lost
 *   count), CNT_EMIT_ROOM those of them a ring refused while it had room.
 *   The verdict is "a record was emitted" (or CNT_EMIT_FAIL counted). Tests
 *   (BPF_PROG_TEST_RUN) observe exactly that: they tag each frame through skb->cb[0],
 *   which comes back as meta.netns (dnswatch/sources/bpf_testrun.py).
 *
 * OFFSETS: the L3 type comes from skb->protocol, and offsets are relative to the header
 *   the kernel marked, read with bpf_skb_load_bytes_relative():
 *   - IPv4/IPv6: BPF_HDR_START_NET. Same in every context: live AF_PACKET (skb->data at
 *     the MAC header, or at the IP header on devices without one: tun, wireguard) and
 *     BPF_PROG_TEST_RUN (which strips 14 bytes as Ethernet before the program runs).
 *   - VLAN (skb->protocol is a TPID): BPF_HDR_START_MAC, parsing the Ethernet header and
 *     its inline tags, because where the network header sits varies: past the tags for
 *     frames sent through AF_PACKET or tagged in software, at the inner tag for QinQ the
 *     stack untagged once, at the first tag in test runs. (Tags the NIC or the stack moved
 *     to skb->vlan_tci are gone from the data; skb->protocol is then the inner type.)
 *   That helper reads only the linear part. If bytes live in page fragments (live only;
 *   test-run skbs are linear) ld() falls back to bpf_skb_load_bytes() from skb->data, which
 *   live is the MAC header; the network header is 14 past it on Ethernet-like devices
 *   (EtherType at data+12 equals skb->protocol), else 0.
 *
 * SETTINGS (-D): DNS_PORTS (comma list, <= 16), RESPONSES (0/1), MAX_CAPTURE (bytes),
 *   LOOPBACK_DEDUP (0/1: on ifindex 1 keep only the outgoing copy), TASK_META (bitmask of
 *   task helpers the kernel allows here: 1 pid_tgid, 2 uid_gid, 4 comm, 8 cgroup_id),
 *   RING_PAGES (pages of each ring, a power of two), RINGS (rings: one per CPU, CPUs past it
 *   share by modulo), RING_SPILL (rings after its own a record may go to when its CPU's is
 *   full, <= 8), RING_WAKEUP (0: the kernel wakes the reader only when it had caught up
 *   on that ring, i.e. at once when idle and never while it works through a batch;
 *   1 = BPF_RB_NO_WAKEUP: the reader polls on its own timeout), NR_CPUS (possible CPUs:
 *   scratch slots).
 *
 * NAMESPACES: one raw socket per network namespace; each has a tiny dispatcher program
 *   (built by user space) that stores its netns inode in skb->cb[0] and tail-calls
 *   progs[0] = this program. Attached directly, cb[0] is 0 (the kernel clears cb).
 *
 * COPIES: a packet seen at several capture points reaches user space once where the kernel can tell.
 *   Loopback (rule 5, LOOPBACK_DEDUP): only the outgoing copy. Other capture points (rule 6,
 *   copy_elsewhere(); settings COPY_WINDOW_NS, 0 = off, and COPY_ENTRIES): the first sighting of an
 *   unfragmented UDP packet is kept, the same packet at another (netns, ifindex, direction) within the
 *   window is dropped and counted in CNT_COPIES (not a loss); at the same point it is a retry, kept.
 */
#ifndef DNS_PORTS
#define DNS_PORTS 53
#endif
#ifndef RESPONSES
#define RESPONSES 0
#endif
#ifndef MAX_CAPTURE
#define MAX_CAPTURE 65400
#endif
#ifndef LOOPBACK_DEDUP
#define LOOPBACK_DEDUP 1
#endif
#ifndef TASK_META
#define TASK_META 15
#endif
#ifndef RING_PAGES
#define RING_PAGES 1024
#endif
#ifndef RINGS
#define RINGS 1
#endif
#ifndef RING_SPILL
#define RING_SPILL 1
#endif
#define SPILL (RING_SPILL < RINGS - 1 ? RING_SPILL : RINGS - 1)
#ifndef RING_WAKEUP
#define RING_WAKEUP 0
#endif
#ifndef NR_CPUS
#define NR_CPUS 64
#endif
/* (65400: the bound perf events had, whose size was a u16; kept as the contract.) */
#if MAX_CAPTURE > 65400 || MAX_CAPTURE < 64
#error "MAX_CAPTURE must be within [64, 65400]"
#endif
#if (RING_PAGES & (RING_PAGES - 1)) || RING_PAGES < 1
#error "RING_PAGES must be a power of two"
#endif
#if RINGS < 1 || RINGS > 1024 || RING_SPILL < 0 || RING_SPILL > 8
#error "RINGS must be within [1, 1024], RING_SPILL within [0, 8]"
#endif

#define TASK_PID    1
#define TASK_UID    2
#define TASK_COMM   4
#define TASK_CGROUP 8

#define ETH_P_IPV4   0x0800
#define ETH_P_IPV6_  0x86DD
#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define ETH_P_QINQ1  0x9100
#define PKT_OUTGOING 4
#define LOOPBACK_IFINDEX 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define MAX_VLAN_TAGS 2
#define MAX_IPV6_EXT 8

#define META_TASK_VALID 1
#define META_MAC_BASE   2   /* l4_off/dns_off count from the MAC header (VLAN), else the network header */

/* Event header; user space parses it with struct.Struct("<QQQQIIIIII16sHHHHBB6x")
 * (EVENT_META in dnswatch/sources/live.py; docs/keep-contract.md "Events"). */
struct event_meta {
    u64 ktime_ns;   /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u64 pid_tgid;   /* task fields: only when flags & META_TASK_VALID */
    u64 uid_gid;
    u64 cgroup_id;
    u32 ifindex;
    u32 pkt_type;   /* PACKET_HOST .. PACKET_OUTGOING */
    u32 orig_len;   /* skb->len */
    u32 cap_len;    /* packet bytes following this header */
    u32 netns;      /* skb->cb[0], set by the per-namespace dispatcher; 0 if none */
    u32 flags;
    char comm[16];
    /* what the rule already parsed, so user space need not again */
    u16 l4_off;     /* transport header (from the base META_MAC_BASE says) */
    u16 dns_off;    /* UDP: the DNS message (its id at dns_off); TCP: 0 */
    u16 dns_id;     /* UDP only, host order */
    u16 dns_flags;  /* UDP only: wire bytes 2-3 (QR is 0x8000) */
    u8 l4_proto;    /* IPPROTO_UDP / IPPROTO_TCP */
    u8 kind;        /* 1 query, 2 response */
    u8 pad[6];
};

/* cap_len in [1, 65536] for the verifier as ((cap - 1) & CAP_MASK) + 1, which equals cap in [1, 65400] */
#define CAP_MASK 0xffff
struct event {
    struct event_meta m;
    u8 data[CAP_MASK + 1];
};

/* DNS header (RFC 1035 4.1.1). Counts are big-endian on the wire. */
typedef struct {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    u8 rd:1, tc:1, aa:1, opcode:4, qr:1;   /* wire byte 2, bit 7 is QR */
    u8 rcode:4, cd:1, ad:1, z:1, ra:1;     /* wire byte 3 */
#else
    u8 qr:1, opcode:4, aa:1, tc:1, rd:1;
    u8 ra:1, z:1, ad:1, cd:1, rcode:4;
#endif
} dns_query_flags_t;

typedef struct {
    u16 id;
    dns_query_flags_t flags;
    u16 qdcount, ancount, nscount, arcount;
} dns_hdr_t;

/* Rule 2's memory: first fragments kept, by (family, src, dst, id). IPv4 uses 4 of 16 bytes. */
struct frag_key {
    u32 id;
    u32 family;
    u8 src[16];
    u8 dst[16];
};

/* CNT_SLOW_LOAD: reads that needed the non-linear fallback in ld().
 * CNT_SKIP_*: DNS-port packets the rule drops, by reason (replay stores the first as malformed, so live
 * must say how many it never saw): a UDP payload shorter than a DNS header, more questions than the bound.
 * Order = _COUNTERS in dnswatch/sources/live.py. */
enum { CNT_SEEN, CNT_KEPT, CNT_EMIT_FAIL, CNT_SLOW_LOAD, CNT_SKIP_SHORT, CNT_SKIP_QDCOUNT, CNT_EMIT_FAIL_RESP,
       CNT_COPIES, CNT_EMIT_ROOM, CNT_MAX };
/* CNT_EMIT_FAIL_RESP: the part of CNT_EMIT_FAIL that were responses; CNT_COPIES: rule 6's drops (copy_elsewhere);
 * CNT_EMIT_ROOM: the part of CNT_EMIT_FAIL a ring it tried had room for, as bpf_ringbuf_query() sees it just after
 * the refusal (the reader only frees space, and advances once per batch): a refused write, not a full ring. */

BPF_RINGBUF_OUTPUT(events, RING_PAGES);   /* ring 0, and the template of rings[1..] */
BPF_ARRAY_OF_MAPS(rings, "events", RINGS);   /* rings[cpu % RINGS]: each CPU writes its own */
BPF_ARRAY(scratch, struct event, NR_CPUS);   /* one record being built per CPU (the filter never nests) */
BPF_PERCPU_ARRAY(counters, u64, CNT_MAX);
BPF_TABLE("lru_hash", struct frag_key, u8, frags, 4096);
BPF_PROG_ARRAY(progs, 1);   /* progs[0] = dns_filter, the dispatchers' tail-call target */

static __always_inline void count(u32 idx)
{
    u64 *v = counters.lookup(&idx);
    if (v)
        *v += 1;
}

static __always_inline u16 be16(const u8 *p) { return ((u16)p[0] << 8) | p[1]; }

static __always_inline int is_vlan(u16 et)
{
    return et == ETH_P_8021Q_ || et == ETH_P_8021AD_ || et == ETH_P_QINQ1;
}

/* The packet and which header offsets are relative to (see OFFSETS above). */
struct pkt {
    struct __sk_buff *skb;
    u32 start;   /* BPF_HDR_START_NET or BPF_HDR_START_MAC */
    u32 sp;      /* skb->protocol, host order (read once: the verifier rejects ctx loads
                    through a pointer clang has offset) */
    u32 l3off;   /* the IP header, from start (for rule 6) */
    u32 v6;
};

/* Read len bytes at off from p->start; 0 on success. */
static __always_inline int ld(struct pkt *p, u32 off, void *to, u32 len)
{
    if (bpf_skb_load_bytes_relative(p->skb, off, to, len, p->start) == 0)
        return 0;
    /* Not in the linear area, or past the end. Rare: find the base each time. */
    count(CNT_SLOW_LOAD);
    u32 base = 0;
    if (p->start == BPF_HDR_START_NET) {
        u8 et[2];
        if (bpf_skb_load_bytes(p->skb, 12, et, 2) == 0 && be16(et) == p->sp)
            base = 14;
    }
    return bpf_skb_load_bytes(p->skb, base + off, to, len);
}

static __always_inline int port_in(u16 port)
{
    const u16 ports[] = {DNS_PORTS};
#pragma unroll
    for (int i = 0; i < sizeof(ports) / sizeof(ports[0]); i++)
        if (port == ports[i])
            return 1;
    return 0;
}

enum { FRAG_NONE, FRAG_FIRST, FRAG_LATER };

/* Where the transport header is, and what the IP header says about it. */
struct l4 {
    u32 off;      /* from p->start */
    int len;      /* transport bytes declared by the IP header (this fragment's, if one) */
    u8 proto;
    u8 frag;      /* FRAG_*; the key is filled when not FRAG_NONE */
    u8 resp;      /* set by keep_transport: a response (server to client), for the loss counters */
    u16 dns_id;   /* set by keep_transport for UDP: the header it judged */
    u16 dns_flags;
};

/* IPv4 header at off (rule 1). 0 if it is one. */
static __always_inline int parse_ipv4(struct pkt *p, u32 off, struct l4 *t, struct frag_key *k)
{
    u8 ip[20];
    if (ld(p, off, ip, sizeof(ip)) || (ip[0] >> 4) != 4)
        return -1;
    int ihl = (ip[0] & 0xf) * 4;
    t->len = (int)be16(ip + 2) - ihl;
    if (ihl < 20 || t->len < 0)
        return -1;
    t->off = off + ihl;
    t->proto = ip[9];
    u16 fo = be16(ip + 6);
    if (fo & 0x1fff)
        t->frag = FRAG_LATER;
    else if (fo & 0x2000)   /* more fragments */
        t->frag = FRAG_FIRST;
    else
        return 0;
    k->id = be16(ip + 4);
    k->family = 4;
    __builtin_memcpy(k->src, ip + 12, 4);
    __builtin_memcpy(k->dst, ip + 16, 4);
    return 0;
}

static __always_inline int is_ipv6_ext(u8 nh)
{
    return nh == 0 || nh == 43 || nh == 44 || nh == 60 || nh == 51 || nh == 135;
}

/* IPv6 header at off and up to MAX_IPV6_EXT extension headers (rule 1). 0 if it is one. */
static __always_inline int parse_ipv6(struct pkt *p, u32 off, struct l4 *t, struct frag_key *k)
{
    u8 ip[40];
    if (ld(p, off, ip, sizeof(ip)) || (ip[0] >> 4) != 6)
        return -1;
    u8 nh = ip[6];
    u32 hoff = off + 40;
#pragma unroll
    for (int i = 0; i < MAX_IPV6_EXT; i++) {
        if (!is_ipv6_ext(nh))
            break;
        u8 eh[8];
        if (ld(p, hoff, eh, sizeof(eh)))
            return -1;
        if (nh == 44) {
            u16 fo = be16(eh + 2);
            if (fo & 0xfff8)
                t->frag = FRAG_LATER;
            else if (fo & 1)
                t->frag = FRAG_FIRST;   /* (offset 0 without M is an atomic fragment: whole) */
            k->id = ((u32)be16(eh + 4) << 16) | be16(eh + 6);
            hoff += 8;
        } else {
            hoff += nh == 51 ? (eh[1] + 2) * 4 : (eh[1] + 1) * 8;
        }
        nh = eh[0];
        if (t->frag == FRAG_LATER)
            break;   /* what follows is the middle of a datagram, not a header */
    }
    if (t->frag != FRAG_LATER && is_ipv6_ext(nh))
        return -1;   /* more than MAX_IPV6_EXT extension headers */
    t->off = hoff;
    t->len = (int)be16(ip + 4) - (int)(hoff - off - 40);
    t->proto = nh;
    if (t->len < 0)
        return -1;
    if (t->frag != FRAG_NONE) {
        k->family = 6;
        __builtin_memcpy(k->src, ip + 8, 16);
        __builtin_memcpy(k->dst, ip + 24, 16);
    }
    return 0;
}

/* Rule 4's question bound: a segment to a DNS port that starts like a query claiming more than 16
 * questions (length prefix, QR 0, qdcount > 16, no answer or authority records, and a length that can
 * hold them). Continuation segments are not headers; this shape is what they almost never have. */
static __always_inline int tcp_too_many_questions(struct pkt *p, struct l4 *t, int doff)
{
    u8 m[14];   /* length prefix + DNS header */
    if (t->len - doff < (int)sizeof(m) || ld(p, t->off + doff, m, sizeof(m)))
        return 0;
    u32 qd = be16(m + 6);
    return !(m[4] & 0x80) && qd > 16 && !be16(m + 8) && !be16(m + 10) && be16(m) >= 12 + 5 * qd;
}

/* Rule 6, copies at another capture point (docs/keep-contract.md "Copies"). With every namespace watched,
 * one packet is seen in its sender's namespace and again on the far side of the veth (and wherever it is
 * routed or bridged on). The first sighting is kept (on the way out of the sender's namespace it is the one
 * that carries the task); a sighting of the same packet at ANOTHER capture point (netns, ifindex, direction:
 * correlate.py's) within COPY_WINDOW_NS of it is dropped and counted in CNT_COPIES, not as a loss. The same
 * bytes again at the same point are a retry (or a new query reusing the id): kept, and the window restarts.
 * "The same packet": addresses, UDP header (ports, length, checksum), DNS header and the start of the
 * question. NAT rewrites an address: a new packet, kept (lookups.py pairs it with the client's as nat_dst).
 * UDP, unfragmented only: TCP segments and fragments go up, user space recognises their copies. A copy of a
 * packet the buffer had no room for is dropped too (the loss is counted once, on the first); so is a copy of
 * a packet rule 3 skips (CNT_SKIP_*, counted once: count_skip). Bounded: an LRU of COPY_ENTRIES; an
 * entry evicted early only lets a copy through to user space, which recognises it. */
#ifndef COPY_WINDOW_NS
#define COPY_WINDOW_NS 50000000   /* correlate.COPY_WINDOW; 0: rule 6 off */
#endif
#ifndef COPY_ENTRIES
#define COPY_ENTRIES 16384        /* > 3 windows of 100k kept packets/s */
#endif
#define COPY_HEAD 64              /* UDP header 8 + DNS header 12 + 44 bytes of the question (name, type) */

struct copy_key {
    u8 addrs[32];         /* source then destination (IPv4: the first 8 bytes) */
    u8 head[COPY_HEAD];   /* from the UDP header on; zero past the datagram's end */
    u16 len;              /* UDP bytes the IP header declares */
    u16 family;
};

struct copy_seen {
    u64 ktime_ns;
    u64 point;            /* netns << 32 | ifindex << 3 | pkt_type */
};

BPF_TABLE("lru_hash", struct copy_key, struct copy_seen, copies, COPY_ENTRIES);

/* 1 if this DNS-port packet is a copy of one seen at another capture point (drop it), else 0 (remembered). */
static __always_inline int copy_elsewhere(struct pkt *p, struct l4 *t)
{
    if (!COPY_WINDOW_NS || t->proto != IPPROTO_UDP_ || t->frag != FRAG_NONE)
        return 0;
    struct copy_key k = {};
    if (p->v6 ? ld(p, p->l3off + 8, k.addrs, 32) : ld(p, p->l3off + 12, k.addrs, 8))
        return 0;
    u32 n = t->len < COPY_HEAD ? t->len : COPY_HEAD;   /* >= 8: keep_transport saw the UDP header */
    if (n < 1 || ld(p, t->off, k.head, n))
        return 0;
    k.len = t->len;
    k.family = p->v6 ? 6 : 4;
    struct __sk_buff *skb = p->skb;
    u64 now = bpf_ktime_get_ns();
    u64 point = ((u64)skb->cb[0] << 32) | ((u64)skb->ifindex << 3) | (skb->pkt_type & 7);
    struct copy_seen *seen = copies.lookup(&k);
    if (seen && (s64)(now - seen->ktime_ns) < COPY_WINDOW_NS && seen->point != point) {
        count(CNT_COPIES);
        return 1;
    }
    struct copy_seen v = {.ktime_ns = now, .point = point};
    copies.update(&k, &v);
    return 0;
}

/* A DNS-port packet the rule drops (CNT_SKIP_*) is a loss counted once, not again at each point it is seen at. */
static __always_inline void count_skip(struct pkt *p, struct l4 *t, u32 idx)
{
    if (!copy_elsewhere(p, t))
        count(idx);
}

/* Rules 3 and 4 on the transport header. Lengths are what the IP header declares for this
 * packet (the UDP length field is not consulted, as in user space). */
static __always_inline int keep_transport(struct pkt *p, struct l4 *t)
{
    if (t->proto == IPPROTO_UDP_) {
        u8 ports[4];
        dns_hdr_t dns;
        if (t->len < 8 || ld(p, t->off, ports, sizeof(ports)))
            return 0;
        if (!port_in(be16(ports)) && !port_in(be16(ports + 2)))
            return 0;
        if (t->len < 8 + (int)sizeof(dns)) {
            count_skip(p, t, CNT_SKIP_SHORT);
            return 0;
        }
        if (ld(p, t->off + 8, &dns, sizeof(dns)))
            return 0;
        if (bpf_ntohs(dns.qdcount) > 16) {
            count_skip(p, t, CNT_SKIP_QDCOUNT);
            return 0;
        }
        t->resp = dns.flags.qr;
        t->dns_id = bpf_ntohs(dns.id);
        t->dns_flags = ((u16)((u8 *)&dns)[2] << 8) | ((u8 *)&dns)[3];
        return !dns.flags.qr || RESPONSES;
    }
    if (t->proto == IPPROTO_TCP_) {
        u8 th[13];   /* ports .. data offset */
        if (t->len < (int)sizeof(th) || ld(p, t->off, th, sizeof(th)))
            return 0;
        int doff = (th[12] >> 4) * 4;
        if (t->len <= doff)
            return 0;   /* nothing after the data offset: SYN, pure ACK, FIN */
        t->resp = !port_in(be16(th + 2));
        if (port_in(be16(th + 2))) {
            if (tcp_too_many_questions(p, t, doff)) {
                count(CNT_SKIP_QDCOUNT);
                return 0;
            }
            return 1;
        }
        return RESPONSES && port_in(be16(th));
    }
    return 0;
}

/* What the rule parsed of a kept unfragmented packet, for struct event_meta (fragments: all 0). */
struct parsed {
    u16 l4_off, dns_off, dns_id, dns_flags;
    u8 l4_proto, mac_base;
};

/* The whole rule (docs/keep-contract.md): 0 drop, 1 keep a query, 2 keep a response. */
static __always_inline int dns_verdict(struct __sk_buff *skb, struct parsed *out)
{
    if (LOOPBACK_DEDUP && skb->ifindex == LOOPBACK_IFINDEX && skb->pkt_type != PKT_OUTGOING)
        return 0;   /* rule 5: loopback packets are seen twice; the sender is known on the way out */

    u16 proto = bpf_ntohs(skb->protocol);
    struct pkt p = {.skb = skb, .start = BPF_HDR_START_NET, .sp = proto};
    u32 off = 0;
    if (is_vlan(proto)) {
        /* Walk the inline tags from the Ethernet header's EtherType. */
        p.start = BPF_HDR_START_MAC;
        off = 12;
#pragma unroll
        for (int i = 0; i <= MAX_VLAN_TAGS; i++) {
            u8 et[2];
            if (ld(&p, off, et, sizeof(et)))
                return 0;
            proto = be16(et);
            off += 2;
            if (!is_vlan(proto))
                break;
            off += 2;   /* TCI */
        }
        if (is_vlan(proto))
            return 0;   /* more than MAX_VLAN_TAGS */
    }

    p.l3off = off;
    p.v6 = proto == ETH_P_IPV6_;
    struct l4 t = {};
    struct frag_key k = {};
    if (proto == ETH_P_IPV4) {
        if (parse_ipv4(&p, off, &t, &k))
            return 0;
    } else if (proto == ETH_P_IPV6_) {
        if (parse_ipv6(&p, off, &t, &k))
            return 0;
    } else {
        return 0;
    }

    /* Rule 2: later fragments follow their first; first fragments are judged and remembered. */
    if (t.frag == FRAG_LATER) {
        u8 *kind = frags.lookup(&k);
        return kind ? *kind : 0;
    }
    if (!keep_transport(&p, &t))
        return 0;
    if (copy_elsewhere(&p, &t))
        return 0;   /* rule 6 */
    u8 kind = 1 + t.resp;
    if (t.frag == FRAG_FIRST) {
        frags.update(&k, &kind);
        return kind;
    }
    out->mac_base = p.start == BPF_HDR_START_MAC;
    out->l4_off = t.off;
    out->l4_proto = t.proto;
    if (t.proto == IPPROTO_UDP_) {
        out->dns_off = t.off + 8;
        out->dns_id = t.dns_id;
        out->dns_flags = t.dns_flags;
    }
    return kind;
}

/* After a refused write of len bytes: whether the ring has room for it now (as the kernel's reserve: the record and
 * its 8-byte header, rounded up to 8, must leave a byte free). */
static __always_inline int ring_had_room(void *ring, u32 len)
{
    return bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) + ((len + 15) & ~7) < bpf_ringbuf_query(ring, BPF_RB_RING_SIZE);
}

static __always_inline void emit_failed(int kind)
{
    count(CNT_EMIT_FAIL);
    if (kind == 2)
        count(CNT_EMIT_FAIL_RESP);
}

int dns_filter(struct __sk_buff *skb)
{
    count(CNT_SEEN);
    struct parsed pr = {};
    int kind = dns_verdict(skb, &pr);
    if (!kind)
        return 0;
    count(CNT_KEPT);

    u32 cpu = bpf_get_smp_processor_id();
    struct event *e = scratch.lookup(&cpu);
    if (!e) {
        emit_failed(kind);   /* cannot happen: NR_CPUS slots */
        return 0;
    }
    struct event_meta *m = &e->m;
    __builtin_memset(m, 0, sizeof(*m));   /* the slot holds the last record */
    m->kind = kind;
    m->l4_off = pr.l4_off;
    m->dns_off = pr.dns_off;
    m->dns_id = pr.dns_id;
    m->dns_flags = pr.dns_flags;
    m->l4_proto = pr.l4_proto;
    if (pr.mac_base)
        m->flags = META_MAC_BASE;
    m->ktime_ns = bpf_ktime_get_ns();
    m->ifindex = skb->ifindex;
    m->pkt_type = skb->pkt_type;
    m->orig_len = skb->len;
    u32 cap = skb->len < MAX_CAPTURE ? skb->len : MAX_CAPTURE;
    m->netns = skb->cb[0];
    if (skb->pkt_type == PKT_OUTGOING && skb->ingress_ifindex == 0) {
        /* Only a locally sent packet runs the filter in its sender's context. A forwarded one
         * (routed through this namespace: it came in on ingress_ifindex) also leaves as
         * OUTGOING, but in softirq, where the current task is whoever was interrupted. */
        m->flags |= META_TASK_VALID;
#if TASK_META & TASK_PID
        m->pid_tgid = bpf_get_current_pid_tgid();
#endif
#if TASK_META & TASK_UID
        m->uid_gid = bpf_get_current_uid_gid();
#endif
#if TASK_META & TASK_COMM
        bpf_get_current_comm(m->comm, sizeof(m->comm));
#endif
#if TASK_META & TASK_CGROUP
        m->cgroup_id = bpf_get_current_cgroup_id();
#endif
    }
    int rc = -1, room = 0;
    cap = ((cap - 1) & CAP_MASK) + 1;   /* (a kept packet has an IP header: cap >= 20) */
    if (bpf_skb_load_bytes(skb, 0, e->data, cap) == 0) {
        m->cap_len = cap;
        u32 len = sizeof(*m) + cap;
        u32 slot = cpu % RINGS;
        /* this CPU's ring; if it refuses (full), the next RING_SPILL rings' */
#pragma unroll
        for (int i = 0; i <= SPILL; i++) {
            void *ring = rings.lookup(&slot);   /* (NULL only if user space left a slot empty) */
            if (ring) {
                rc = bpf_ringbuf_output(ring, e, len, RING_WAKEUP);
                if (rc == 0)
                    break;
                room |= ring_had_room(ring, len);
            }
            slot = slot + 1 < RINGS ? slot + 1 : 0;
        }
    }
    if (rc < 0) {
        emit_failed(kind);
        if (room)
            count(CNT_EMIT_ROOM);
    }
    return 0;
}
