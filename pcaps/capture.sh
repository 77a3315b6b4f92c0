#!/bin/bash
# Make the *real* DNS test captures for dnswatch: real servers (unbound, dnsmasq) and real clients
# (dig, kdig, getent/glibc, python getaddrinfo, dnsperf), captured with tcpdump and dumpcap.
#
# Root only. Re-runnable: every run overwrites the files listed in OUTPUTS below in the directory of
# this script (or $OUT). Everything runs inside three network namespaces this script creates and
# removes again; they have no default route, so nothing can leave the machine:
#
#   netns dnswatch-srv  (the "host side": unbound :53, dnsmasq 127.0.0.1/::1 :53, dnsmasq :5353)
#     srv0 198.18.0.1/24 fd00:18::1/64   <-veth->  cli0 198.18.0.2/24 fd00:18::2/64   netns dnswatch-cli1
#     srv1 198.18.1.1/24 fd00:18:1::1/64 <-veth->  cli1 198.18.1.2/24 fd00:18:1::2/64 netns dnswatch-cli2
#
# The servers never recurse: unbound has `local-zone: "." static` plus auth-zones for test. and
# example.com. (for-upstream: no, fallback-enabled: no); dnsmasq runs with --no-resolv --no-hosts
# --no-poll and only --host-record/--address style entries. Captures are taken on the server-side
# interfaces (srv0/srv1, Ethernet) or on "any" inside the server namespace (Linux cooked v2).
#
# Needs: iproute2, tcpdump, dumpcap, tshark, capinfos, unbound, dnsmasq, dig, kdig, dnsperf, getent,
# python3, ethtool (optional but wanted: turns off TSO/GSO so large TCP answers are real MSS-sized
# segments in the capture, and tx checksum offload so veth frames carry valid checksums; without it
# the veth hands tcpdump one >1500-byte GSO super-packet with partial checksums). Loopback frames
# (any_sll2.pcap) keep the kernel's partial, "wrong" UDP checksums, as every loopback capture does.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "capture.sh: must run as root (creates network namespaces)" >&2
    exit 1
fi
for tool in ip tcpdump dumpcap tshark capinfos unbound dnsmasq dig kdig dnsperf getent timeout; do
    command -v "$tool" >/dev/null || { echo "capture.sh: missing tool: $tool" >&2; exit 1; }
done
PY3=/usr/bin/python3
[ -x "$PY3" ] || PY3=$(command -v python3)

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$HERE}
NS_S=dnswatch-srv
NS_C1=dnswatch-cli1
NS_C2=dnswatch-cli2
WORK=$(mktemp -d /tmp/dnswatch-capture.XXXXXX)
BGPIDS=()        # every background process this script starts (servers, capturers)
LEAKPID=""
DIG=(dig +tries=1 +time=2)
KDIG=(kdig +retry=0 +time=2)

log() { printf '== %s\n' "$*" >&2; }

cleanup() {
    local rc=$?
    set +e
    for p in "${BGPIDS[@]}" $LEAKPID; do kill -TERM "$p" 2>/dev/null; done
    for _ in $(seq 1 30); do            # at most 3 s for them to go
        local alive=0
        for p in "${BGPIDS[@]}" $LEAKPID; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in "${BGPIDS[@]}" $LEAKPID; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    for ns in $NS_C1 $NS_C2 $NS_S; do ip netns del "$ns" 2>/dev/null; done
    for ns in $NS_C1 $NS_C2; do rm -rf "/etc/netns/$ns"; done
    rmdir /etc/netns 2>/dev/null    # only if empty (i.e. we created it)
    rm -rf "$WORK"
    [ $rc = 0 ] || echo "capture.sh: FAILED (rc=$rc); cleaned up" >&2
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# namespaces and veths
# ---------------------------------------------------------------------------------------------
for ns in $NS_S $NS_C1 $NS_C2; do
    if ip netns list | grep -qw "$ns"; then
        log "removing leftover namespace $ns from an earlier run"
        ip netns del "$ns"
    fi
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done

# veth pair: server-side name, client netns, client-side name, v4 subnet index, MACs
mkveth() {
    local sname=$1 cns=$2 cname=$3 idx=$4
    ip link add "$sname" netns $NS_S address "02:00:5e:12:0$idx:01" type veth \
        peer name "$cname" netns "$cns" address "02:00:5e:12:0$idx:02"
    local v6net="fd00:18::"
    [ "$idx" = 0 ] || v6net="fd00:18:$idx::"
    for side in "$NS_S $sname 1" "$cns $cname 2"; do
        set -- $side
        ip netns exec "$1" sysctl -qw "net.ipv6.conf.$2.accept_ra=0" "net.ipv6.conf.$2.router_solicitations=0"
        ip -n "$1" addr add "198.18.$idx.$3/24" dev "$2"
        ip -n "$1" addr add "${v6net}$3/64" dev "$2" nodad
        if command -v ethtool >/dev/null; then
            ip netns exec "$1" ethtool -K "$2" tx off tso off gso off gro off >/dev/null 2>&1 || true
        fi
        ip -n "$1" link set "$2" up
    done
}
command -v ethtool >/dev/null || log "WARNING: ethtool missing; large TCP answers will be GSO super-packets"
mkveth srv0 $NS_C1 cli0 0
mkveth srv1 $NS_C2 cli1 1

# hard rule: no namespace may have a default route
for ns in $NS_S $NS_C1 $NS_C2; do
    if [ -n "$(ip -n $ns route show default)$(ip -n $ns -6 route show default)" ]; then
        echo "capture.sh: namespace $ns has a default route, refusing" >&2; exit 1
    fi
done

# resolv.conf for glibc clients in client namespace 1 (bind-mounted by `ip netns exec`)
mkdir -p /etc/netns/$NS_C1 /etc/netns/$NS_C2
printf 'nameserver 198.18.0.1\nsearch example.test\noptions timeout:1 attempts:1\n' >/etc/netns/$NS_C1/resolv.conf
printf 'nameserver 198.18.1.1\noptions timeout:1 attempts:1\n' >/etc/netns/$NS_C2/resolv.conf

# Sanity check on the real uplink: nothing from our ranges may ever show up there.
UPLINK=$(ip route show default 2>/dev/null | awk '/default/ {for (i=1;i<NF;i++) if ($i=="dev") print $(i+1); exit}')
if [ -n "$UPLINK" ]; then
    timeout -s INT 600 tcpdump -i "$UPLINK" -n -s 0 -U -w "$WORK/leak.pcap" \
        'net 198.18.0.0/15 or ip6 net fd00::/8 or port 5353' >"$WORK/leak.log" 2>&1 &
    LEAKPID=$!
fi

# ---------------------------------------------------------------------------------------------
# servers
# ---------------------------------------------------------------------------------------------
mkdir -p "$WORK/unbound"
{
    cat <<'EOF'
$ORIGIN test.
$TTL 300
@               SOA   ns.test. hostmaster.test. 2024010101 3600 600 86400 300
@               NS    ns.test.
ns              A     198.18.0.1
ns              AAAA  fd00:18::1
example         A     198.18.0.80
example         MX    10 mail.example.test.
example         MX    20 mail2.example.test.
www.example     A     198.18.0.80
www.example     AAAA  fd00:18::80
mail.example    A     198.18.0.25
mail.example    AAAA  fd00:18::25
mail2.example   A     198.18.0.26
txt.example     TXT   "v=spf1 ip4:198.18.0.0/15 -all"
txt.example     TXT   "hello from dnswatch" "second string"
a.example       CNAME b.example.test.
b.example       CNAME c.example.test.
c.example       A     198.18.0.10
c.example       AAAA  fd00:18::10
_dns._udp.example SRV 0 0 53 ns.test.
chain.example   CNAME one.example.test.
one.example     CNAME two.example.test.
two.example     CNAME www.example.test.
ext.example     CNAME www.example.com.
dname.example   DNAME example.com.
nullmx.example  MX    0 .
_sip._tcp.example SRV 10 60 5060 sip1.example.test.
_sip._tcp.example SRV 20 0 5061 sip2.example.test.
sip1.example    A     198.18.0.61
sip2.example    A     198.18.0.62
quote.example   TXT   "\"quoted\" she said" "back\\slash" "tab\009and\027[31mesc" "\200\255 high" ""
quote.example   TXT   "semi;colon (paren) @at $dollar"
spf.example     SPF   "v=spf1 ip4:198.18.0.0/15 -all"
spf.example     TXT   "v=spf1 ip4:198.18.0.0/15 -all"
EOF
    # big.example.test TXT: 60 x ~100-byte strings (~6.5 KB answer)
    for i in $(seq -w 1 60); do
        printf 'big.example     TXT   "dnswatch-big-record-%s-%s"\n' "$i" \
            "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789"
    done
    # many.example.test A: 200 addresses (~3.2 KB answer)
    for i in $(seq 1 200); do
        printf 'many.example    A     198.18.2.%d\n' "$i"
    done
} >"$WORK/unbound/test.zone"
cat >"$WORK/unbound/example.com.zone" <<'EOF'
$ORIGIN example.com.
$TTL 300
@     SOA   ns.example.com. hostmaster.example.com. 2024010101 3600 600 86400 300
@     NS    ns.example.com.
@     MX    10 mail.example.com.
ns    A     198.18.0.1
www   A     198.18.0.81
www   AAAA  fd00:18::81
mail  A     198.18.0.82
EOF
cat >"$WORK/unbound/unbound.conf" <<EOF
server:
  interface: 198.18.0.1
  interface: fd00:18::1
  interface: 198.18.1.1
  interface: fd00:18:1::1
  port: 53
  do-ip6: yes
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "$WORK/unbound"
  pidfile: "$WORK/unbound/unbound.pid"
  use-syslog: no
  logfile: ""
  verbosity: 1
  num-threads: 1
  module-config: "iterator"
  prefetch: no
  access-control: 198.18.0.0/15 allow
  access-control: fd00::/8 allow
  # never recurse: everything not below is answered locally (NXDOMAIN)
  local-zone: "." static
  local-zone: "test." transparent
  local-zone: "example.com." transparent
  local-data-ptr: "198.18.0.80 www.example.test."
  local-data-ptr: "fd00:18::80 www.example.test."
  local-data-ptr: "198.18.0.61 sip1.example.test."
auth-zone:
  name: "test."
  zonefile: "$WORK/unbound/test.zone"
  for-downstream: yes
  for-upstream: no
  fallback-enabled: no
auth-zone:
  name: "example.com."
  zonefile: "$WORK/unbound/example.com.zone"
  for-downstream: yes
  for-upstream: no
  fallback-enabled: no
remote-control:
  control-enable: no
EOF
unbound-checkconf "$WORK/unbound/unbound.conf" >/dev/null
ip netns exec $NS_S timeout 600 unbound -d -c "$WORK/unbound/unbound.conf" >"$WORK/unbound.log" 2>&1 &
BGPIDS+=($!)

DNSMASQ_COMMON=(dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --no-poll
    --bind-interfaces --user=root --group=root --log-queries --local=/test/)
# second server, on the server namespace's loopback, port 53
ip netns exec $NS_S timeout 600 "${DNSMASQ_COMMON[@]}" --listen-address=127.0.0.1 --listen-address=::1 \
    --port=53 --pid-file="$WORK/dnsmasq-lo.pid" --log-facility="$WORK/dnsmasq-lo.log" \
    --host-record=lo.example.test,198.18.0.53,fd00:18::53 --address=/wild.example.test/198.18.0.54 \
    >"$WORK/dnsmasq-lo.out" 2>&1 &
BGPIDS+=($!)
# third server: non-standard port 5353 on 198.18.0.1
ip netns exec $NS_S timeout 600 "${DNSMASQ_COMMON[@]}" --listen-address=198.18.0.1 --port=5353 \
    --pid-file="$WORK/dnsmasq-5353.pid" --log-facility="$WORK/dnsmasq-5353.log" \
    --host-record=alt.example.test,198.18.0.90,fd00:18::90 \
    --txt-record=txt.alt.example.test,"served on port 5353" \
    --mx-host=alt.example.test,mail.alt.example.test,10 \
    --host-record=mail.alt.example.test,198.18.0.91 \
    --cname=cname.alt.example.test,alt.example.test \
    >"$WORK/dnsmasq-5353.out" 2>&1 &
BGPIDS+=($!)

# wait (bounded) until each server answers
wait_dns() {  # ns server port name
    for _ in $(seq 1 50); do
        if ip netns exec "$1" "${DIG[@]}" +short -p "$3" @"$2" "$4" A 2>/dev/null | grep -q .; then return 0; fi
        sleep 0.1
    done
    echo "capture.sh: server $2#$3 does not answer $4" >&2; return 1
}
wait_dns $NS_C1 198.18.0.1 53 www.example.test
wait_dns $NS_C1 fd00:18::1 53 www.example.test
wait_dns $NS_C2 198.18.1.1 53 www.example.test
wait_dns $NS_S 127.0.0.1 53 lo.example.test
wait_dns $NS_C1 198.18.0.1 5353 alt.example.test

# ---------------------------------------------------------------------------------------------
# capture helpers
# ---------------------------------------------------------------------------------------------
CAP_PID=""
CAP_LOG=""
# start_cap NS LOGNAME CMD...   (CMD is a tcpdump/dumpcap command line)
start_cap() {
    local ns=$1 name=$2; shift 2
    CAP_LOG="$WORK/$name.caplog"
    ip netns exec "$ns" timeout -s INT 120 "$@" >"$CAP_LOG" 2>&1 &
    CAP_PID=$!
    BGPIDS+=($CAP_PID)
    for _ in $(seq 1 100); do   # at most 10 s until the capturer is ready
        if grep -qE 'listening on|Capturing on' "$CAP_LOG"; then sleep 0.3; return 0; fi
        kill -0 $CAP_PID 2>/dev/null || break
        sleep 0.1
    done
    cat "$CAP_LOG" >&2; echo "capture.sh: capturer did not start" >&2; return 1
}
stop_cap() {
    sleep 0.5
    kill -INT $CAP_PID 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 $CAP_PID 2>/dev/null || break; sleep 0.1; done
    kill -KILL $CAP_PID 2>/dev/null || true
    wait $CAP_PID 2>/dev/null || true
    cat "$CAP_LOG" | sed 's/^/   [capture] /' >&2
}
C1() { ip netns exec $NS_C1 "$@"; }
C2() { ip netns exec $NS_C2 "$@"; }
S() { ip netns exec $NS_S "$@"; }
q() { "$@" >>"$WORK/clients.log" 2>&1 || true; }   # a client run; a failed lookup (NXDOMAIN ...) is fine

OUTPUTS=()
finish() {  # move a finished capture into OUT
    local f=$1
    [ -s "$WORK/$f" ] || { echo "capture.sh: $f is empty" >&2; exit 1; }
    install -m 0644 "$WORK/$f" "$OUT/$f"
    OUTPUTS+=("$f")
}
TCPDUMP=(tcpdump -n -s 0 -U --immediate-mode)
# ONLY="a.pcap b.pcap" pcaps/capture.sh makes just those files (the others keep their bytes, ids and times)
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

# ---------------------------------------------------------------------------------------------
# 1. udp_v4_dig.pcap: dig over UDP/IPv4, tcpdump on srv0 (Ethernet)
# ---------------------------------------------------------------------------------------------
if want udp_v4_dig.pcap; then
log "udp_v4_dig.pcap"
start_cap $NS_S udp_v4_dig "${TCPDUMP[@]}" -i srv0 -w "$WORK/udp_v4_dig.pcap" 'udp or tcp or arp or icmp'
A=(@198.18.0.1)
q C1 "${DIG[@]}" "${A[@]}" www.example.test A
q C1 "${DIG[@]}" "${A[@]}" www.example.test AAAA
q C1 "${DIG[@]}" "${A[@]}" example.test MX
q C1 "${DIG[@]}" "${A[@]}" txt.example.test TXT
q C1 "${DIG[@]}" "${A[@]}" a.example.test A                     # CNAME chain a -> b -> c
q C1 "${DIG[@]}" "${A[@]}" nxdomain.example.test A              # NXDOMAIN
q C1 "${DIG[@]}" "${A[@]}" WwW.ExAmple.TEST A                   # mixed case, echoed back as sent
q C1 "${DIG[@]}" "${A[@]}" +dnssec www.example.com A            # EDNS DO bit
q C1 "${DIG[@]}" "${A[@]}" +subnet=198.18.5.0/24 www.example.test A   # EDNS client subnet
q C1 "${DIG[@]}" "${A[@]}" -x 198.18.0.80                       # PTR
q C1 "${DIG[@]}" "${A[@]}" +norecurse _dns._udp.example.test SRV  # RD=0, SRV
q C1 "${DIG[@]}" "${A[@]}" +noedns +nocookie www.example.test A # plain, no OPT RR
stop_cap
finish udp_v4_dig.pcap
fi

# ---------------------------------------------------------------------------------------------
# 2. tcp_kdig_v6.pcapng: DNS over TCP (v4 + v6), pipelined queries, multi-segment answers
# ---------------------------------------------------------------------------------------------
if want tcp_kdig_v6.pcapng; then
log "tcp_kdig_v6.pcapng"
start_cap $NS_S tcp_kdig_v6 dumpcap -q -s 0 -i srv0 -f 'udp or tcp' -w "$WORK/tcp_kdig_v6.pcapng"
q C1 "${KDIG[@]}" +tcp @198.18.0.1 www.example.test A
q C1 "${KDIG[@]}" +tcp @fd00:18::1 www.example.test AAAA
# three queries on one TCP connection (kdig +keepopen), v4 and v6
q C1 "${KDIG[@]}" +tcp +keepopen @198.18.0.1 www.example.test A mail.example.test A example.test MX
q C1 "${KDIG[@]}" +tcp +keepopen @fd00:18::1 www.example.test AAAA c.example.test AAAA txt.example.test TXT
# dig's version of the same: several names on one connection
q C1 "${DIG[@]}" +tcp +keepopen @198.18.0.1 www.example.com A www.example.com AAAA a.example.test A
# large answers spanning several TCP segments
q C1 "${KDIG[@]}" +tcp @fd00:18::1 big.example.test TXT         # ~6.5 KB over IPv6
q C1 "${KDIG[@]}" +tcp @198.18.0.1 many.example.test A          # ~3.2 KB over IPv4
# UDP answer too big -> TC=1 -> kdig retries the same query over TCP
q C1 "${KDIG[@]}" @198.18.0.1 big.example.test TXT
q C1 "${KDIG[@]}" +tcp @fd00:18::1 nxdomain.example.test A      # NXDOMAIN over TCP
stop_cap
finish tcp_kdig_v6.pcapng
fi

# ---------------------------------------------------------------------------------------------
# 3. any_sll2.pcap: tcpdump -i any in the server netns (Linux cooked v2), glibc stub clients,
#    plus dig over the loopback to the second server
# ---------------------------------------------------------------------------------------------
if want any_sll2.pcap; then
log "any_sll2.pcap"
start_cap $NS_S any_sll2 "${TCPDUMP[@]}" -i any -w "$WORK/any_sll2.pcap" 'udp or tcp'
q C1 timeout 10 getent ahosts www                 # search list: www.example.test
q C1 timeout 10 getent ahosts c.example.test
q C1 timeout 10 getent ahosts nxdomain.example.test
q C1 timeout 10 "$PY3" -c 'import socket; print(socket.getaddrinfo("a.example.test", 443, proto=socket.IPPROTO_TCP))'
q C1 timeout 10 "$PY3" -c 'import socket; print(socket.getaddrinfo("mail.example.test", 25, socket.AF_INET, socket.SOCK_STREAM))'
q S "${DIG[@]}" @127.0.0.1 -p 53 lo.example.test A
q S "${DIG[@]}" @::1 -p 53 lo.example.test AAAA
q S "${DIG[@]}" @127.0.0.1 -p 53 x.wild.example.test A
stop_cap
finish any_sll2.pcap
fi

# ---------------------------------------------------------------------------------------------
# 4. dnsperf_small.pcap: dnsperf, 20 names x 18 runs = 360 queries, rate-limited
# ---------------------------------------------------------------------------------------------
if want dnsperf_small.pcap; then
log "dnsperf_small.pcap"
cat >"$WORK/dnsperf.txt" <<'EOF'
www.example.test A
www.example.test AAAA
example.test MX
txt.example.test TXT
a.example.test A
c.example.test AAAA
mail.example.test A
mail2.example.test A
_dns._udp.example.test SRV
example.test SOA
example.test NS
www.example.com A
www.example.com AAAA
example.com MX
80.0.18.198.in-addr.arpa PTR
nxdomain.example.test A
missing.example.com AAAA
no-such-host.test A
WWW.EXAMPLE.TEST A
nothere.example.test TXT
EOF
start_cap $NS_S dnsperf_small "${TCPDUMP[@]}" -i srv0 -w "$WORK/dnsperf_small.pcap" 'udp port 53'
q C1 timeout 30 dnsperf -s 198.18.0.1 -p 53 -d "$WORK/dnsperf.txt" -c 1 -T 1 -Q 200 -q 10 -n 18 -l 20 -t 2
stop_cap
finish dnsperf_small.pcap
fi

# ---------------------------------------------------------------------------------------------
# 5. multi_if.pcapng: dumpcap on srv0 and srv1 at once (2 interface description blocks)
# ---------------------------------------------------------------------------------------------
if want multi_if.pcapng; then
log "multi_if.pcapng"
start_cap $NS_S multi_if dumpcap -q -s 0 -i srv0 -f 'udp or tcp' -i srv1 -f 'udp or tcp' -w "$WORK/multi_if.pcapng"
q C1 "${DIG[@]}" @198.18.0.1 www.example.test A
q C2 "${DIG[@]}" @198.18.1.1 www.example.test A
q C1 "${DIG[@]}" @fd00:18::1 mail.example.test AAAA
q C2 "${DIG[@]}" @fd00:18:1::1 mail.example.test AAAA
q C2 timeout 10 getent ahosts www.example.com
q C1 "${DIG[@]}" +tcp @198.18.0.1 txt.example.test TXT
q C2 "${DIG[@]}" @198.18.1.1 nxdomain.example.test A
stop_cap
finish multi_if.pcapng
fi

# ---------------------------------------------------------------------------------------------
# 6. udp_port5353.pcap: dnsmasq on the non-standard port 5353 (unicast DNS, not mDNS)
# ---------------------------------------------------------------------------------------------
if want udp_port5353.pcap; then
log "udp_port5353.pcap"
start_cap $NS_S udp_port5353 "${TCPDUMP[@]}" -i srv0 -w "$WORK/udp_port5353.pcap" 'port 5353'
P=(-p 5353 @198.18.0.1)
q C1 "${DIG[@]}" "${P[@]}" alt.example.test A
q C1 "${DIG[@]}" "${P[@]}" alt.example.test AAAA
q C1 "${DIG[@]}" "${P[@]}" txt.alt.example.test TXT
q C1 "${DIG[@]}" "${P[@]}" alt.example.test MX
q C1 "${DIG[@]}" "${P[@]}" cname.alt.example.test A
q C1 "${DIG[@]}" "${P[@]}" nxdomain.alt.example.test A       # NXDOMAIN (--local=/test/)
q C1 "${DIG[@]}" "${P[@]}" www.example.com A                 # REFUSED (no upstream)
q C1 "${DIG[@]}" "${P[@]}" +tcp alt.example.test A           # TCP to port 5353
stop_cap
finish udp_port5353.pcap
fi

# ---------------------------------------------------------------------------------------------
# 7. answers_dig.pcap: every answer type the tshark cross-check compares, from dig and kdig over UDP
# ---------------------------------------------------------------------------------------------
if want answers_dig.pcap; then
log "answers_dig.pcap"
start_cap $NS_S answers_dig "${TCPDUMP[@]}" -i srv0 -w "$WORK/answers_dig.pcap" 'udp or tcp'
A=(@198.18.0.1)
q C1 "${DIG[@]}" "${A[@]}" chain.example.test A                 # CNAME chain of 3, then A
q C1 "${DIG[@]}" "${A[@]}" ext.example.test A                   # CNAME into the other zone
q C1 "${DIG[@]}" "${A[@]}" www.dname.example.test A             # DNAME + synthesised CNAME
q C1 "${DIG[@]}" "${A[@]}" -x 198.18.0.80                       # PTR (v4)
q C1 "${DIG[@]}" "${A[@]}" -x fd00:18::80                       # PTR (ip6.arpa)
q C1 "${DIG[@]}" "${A[@]}" -x 198.18.0.61                       # PTR
q C1 "${DIG[@]}" "${A[@]}" example.test MX                      # MX x2
q C1 "${DIG[@]}" "${A[@]}" nullmx.example.test MX               # null MX: target is the root
q C1 "${DIG[@]}" "${A[@]}" _sip._tcp.example.test SRV           # SRV x2 (+ additional A)
q C1 "${DIG[@]}" "${A[@]}" quote.example.test TXT               # quotes, backslash, TAB, ESC, 8-bit, empty
q C1 "${DIG[@]}" "${A[@]}" spf.example.test SPF                 # type 99
q C1 "${DIG[@]}" "${A[@]}" spf.example.test TXT
q C1 "${DIG[@]}" "${A[@]}" test NS
q C1 "${DIG[@]}" "${A[@]}" test SOA
q C1 "${KDIG[@]}" @fd00:18::1 quote.example.test TXT             # kdig, IPv6
q C1 "${KDIG[@]}" @fd00:18::1 chain.example.test AAAA
q C1 "${KDIG[@]}" @198.18.0.1 _sip._tcp.example.test SRV
stop_cap
finish answers_dig.pcap
fi

# ---------------------------------------------------------------------------------------------
# 8. tcp_keepopen.pcap / tcp_segment_lost.pcap: one TCP connection carrying 6 queries (kdig +keepopen),
#    two answers of several segments; then the same capture with one segment deleted (scapy)
# ---------------------------------------------------------------------------------------------
if want tcp_keepopen.pcap || want tcp_segment_lost.pcap; then
log "tcp_keepopen.pcap, tcp_segment_lost.pcap"
start_cap $NS_S tcp_keepopen "${TCPDUMP[@]}" -i srv0 -w "$WORK/tcp_keepopen.pcap" 'tcp port 53'
q C1 "${KDIG[@]}" +tcp +keepopen @198.18.0.1 www.example.test A big.example.test TXT c.example.test A \
    quote.example.test TXT many.example.test A mail.example.test A
stop_cap
finish tcp_keepopen.pcap
# Delete the 3rd of the 5 segments of the big.example.test TXT answer (server to client): the messages
# after it (c, quote, many, mail) are whole in the file, behind a 1448-byte hole.
EDIT_PY=${EDIT_PY:-$HERE/../.venv/bin/python}
[ -x "$EDIT_PY" ] || EDIT_PY=$PY3
"$EDIT_PY" - "$WORK/tcp_keepopen.pcap" "$WORK/tcp_segment_lost.pcap" <<'PYEOF'
import struct, sys
from scapy.all import TCP, rdpcap, wrpcap
pkts = rdpcap(sys.argv[1])
data = [i for i, p in enumerate(pkts) if TCP in p and p[TCP].sport == 53 and len(p[TCP].payload)]
first = next(i for i in data if struct.unpack("!H", bytes(pkts[i][TCP].payload)[:2])[0] > 6000)
victim = data[data.index(first) + 2]
print(f"capture.sh: deleting frame {victim + 1} ({len(pkts[victim][TCP].payload)} bytes of TCP payload)", file=sys.stderr)
wrpcap(sys.argv[2], [p for i, p in enumerate(pkts) if i != victim], linktype=1)
PYEOF
finish tcp_segment_lost.pcap
fi

# ---------------------------------------------------------------------------------------------
# leak check and summary
# ---------------------------------------------------------------------------------------------
if [ -n "$LEAKPID" ]; then
    sleep 0.3
    kill -INT "$LEAKPID" 2>/dev/null || true
    wait "$LEAKPID" 2>/dev/null || true
    n=$(tcpdump -r "$WORK/leak.pcap" -n 2>/dev/null | wc -l)
    if [ "$n" != 0 ]; then
        echo "capture.sh: $n packet(s) from our test ranges seen on $UPLINK!" >&2; exit 1
    fi
    log "leak check: 0 packets on $UPLINK matching 198.18.0.0/15, fd00::/8 or port 5353"
    LEAKPID=""
fi

log "summary (frames with a DNS query / response as tshark sees them; expected queries in [])"
declare -A EXPECT=([udp_v4_dig.pcap]=12 [tcp_kdig_v6.pcapng]=16 [any_sll2.pcap]=14 [dnsperf_small.pcap]=360
    [multi_if.pcapng]=8 [udp_port5353.pcap]=8 [answers_dig.pcap]=17 [tcp_keepopen.pcap]=6
    [tcp_segment_lost.pcap]=6)
declare -A EXPECT_R=([tcp_segment_lost.pcap]=5)   # responses, where not one per query: the big answer lost its 3rd segment
MISMATCH=0
for f in "${OUTPUTS[@]}"; do
    dec=()
    case $f in udp_port5353.pcap) dec=(-d udp.port==5353,dns -d tcp.port==5353,dns) ;; esac
    nq=$(tshark -n -r "$OUT/$f" "${dec[@]}" -Y 'dns.flags.response == 0' 2>/dev/null | wc -l)
    nr=$(tshark -n -r "$OUT/$f" "${dec[@]}" -Y 'dns.flags.response == 1' 2>/dev/null | wc -l)
    lt=$(capinfos -E -T -r "$OUT/$f" | awk -F'\t' '{print $2}')
    printf '   %-22s %7d bytes  %-12s %4d queries [%d] %4d responses\n' "$f" "$(stat -c %s "$OUT/$f")" "$lt" \
        "$nq" "${EXPECT[$f]}" "$nr" >&2
    [ "$nq" = "${EXPECT[$f]}" ] && [ "$nr" = "${EXPECT_R[$f]:-${EXPECT[$f]}}" ] || MISMATCH=1
done
if [ $MISMATCH = 1 ]; then
    echo "capture.sh: WARNING: some capture is missing queries or responses; client output:" >&2
    tail -n 60 "$WORK/clients.log" >&2
fi
