#!/bin/bash
# Make pcaps/udp_retry.pcap: real clients retransmitting a query whose first answer never arrives.
# Root only. Two network namespaces (198.18.0.0/24, no default route), removed again on exit.
# unbound answers in namespace S; an nftables rule in S's output hook drops every other UDP answer
# from port 53, starting with the first (numgen inc mod 2), reset before each client; tcpdump on S's
# veth sees packets after that hook, so the dropped answer is not in the file.
#   1. glibc (Python's socket.gethostbyname, resolv.conf "timeout:1 attempts:2"): resends the same
#      bytes from the same socket 1 s later (same ports and id) -> one row, attempts 2.
#   2. dig +tries=2 +time=1: resends the same id from a NEW source port -> not the same transaction
#      (tshark does not call it a retransmission either): an unanswered row and an answered one.
#   3. kdig +retry=1 +time=1: also from a new port.
# Needs: ip, nft, tcpdump, unbound, dig, kdig, python3.   Usage: sudo pcaps/capture_retry.sh
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "capture_retry.sh: must run as root" >&2; exit 1; }
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$HERE}
S=dnswatch-retry-srv
C=dnswatch-retry-cli
WORK=$(mktemp -d /tmp/dnswatch-retry.XXXXXX)
PIDS=()
cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    ip netns del $S 2>/dev/null; ip netns del $C 2>/dev/null
    rm -rf "/etc/netns/$C" "$WORK"
}
trap cleanup EXIT
for ns in $S $C; do ip netns del $ns 2>/dev/null || true; ip netns add $ns; ip -n $ns link set lo up; done
ip link add srv0 netns $S address 02:00:5e:12:00:01 type veth peer name cli0 netns $C address 02:00:5e:12:00:02
ip -n $S addr add 198.18.0.1/24 dev srv0; ip -n $C addr add 198.18.0.2/24 dev cli0
ip -n $S link set srv0 up; ip -n $C link set cli0 up
mkdir -p /etc/netns/$C
printf 'nameserver 198.18.0.1\noptions timeout:1 attempts:2\n' >/etc/netns/$C/resolv.conf
cat >"$WORK/unbound.conf" <<U
server:
  interface: 198.18.0.1
  port: 53
  do-daemonize: no
  use-syslog: no
  logfile: ""
  chroot: ""
  username: ""
  directory: "$WORK"
  pidfile: ""
  module-config: "iterator"
  access-control: 0.0.0.0/0 allow
  num-threads: 1
  local-zone: "." static
  local-zone: "example.test." static
  local-data: "retry.example.test. 300 IN A 198.18.0.44"
  local-data: "dig-retry.example.test. 300 IN A 198.18.0.45"
  local-data: "kdig-retry.example.test. 300 IN A 198.18.0.46"
remote-control:
  control-enable: no
U
ip netns exec $S unbound -d -c "$WORK/unbound.conf" 2>/dev/null & PIDS+=($!)
for _ in $(seq 100); do
    ip netns exec $C dig +short +tries=1 +time=1 @198.18.0.1 retry.example.test | grep -q 198.18.0.44 && break
    sleep 0.1
done
drop_first_answer() {
    ip netns exec $S nft delete table inet dnswatch_retry 2>/dev/null || true
    ip netns exec $S nft -f - <<N
table inet dnswatch_retry {
  chain out { type filter hook output priority 0; udp sport 53 numgen inc mod 2 == 0 drop; }
}
N
}
ip netns exec $S tcpdump -i srv0 -n -s 0 -U --immediate-mode -w "$WORK/udp_retry.pcap" 'port 53' 2>/dev/null & PIDS+=($!)
sleep 1
drop_first_answer
ip netns exec $C /usr/bin/python3 -c "import socket; print('glibc:', socket.gethostbyname('retry.example.test'))"
drop_first_answer
ip netns exec $C dig +tries=2 +time=1 +short @198.18.0.1 dig-retry.example.test A | sed 's/^/dig: /'
drop_first_answer
ip netns exec $C kdig +retry=1 +time=1 +short @198.18.0.1 kdig-retry.example.test A | sed 's/^/kdig: /'
sleep 1.5  # kdig: the last answer, before tcpdump stops
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
cp "$WORK/udp_retry.pcap" "$OUT/udp_retry.pcap"
tshark -n -r "$OUT/udp_retry.pcap" -T fields -e frame.time_relative -e udp.srcport -e udp.dstport -e dns.id \
    -e dns.qry.name -e dns.retransmission -e dns.time 2>/dev/null || true
