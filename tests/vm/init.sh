#!/bin/busybox sh
# PID 1 of the steering test VM (busybox), see run_vm.py. Profile from the
# kernel command line (shunt.profile=): "netkit" expects netkit pods and
# tcx, "legacy" (Linux 6.1) veth pods and legacy clsact filters. Creates two
# pods with the real `shunt pod add`, runs `shunt run` with steering, checks
# pod-to-pod traffic through the proxy and without it, fail_closed with the
# proxy stopped, and that `pod del` + proxy exit leave nothing behind; a
# `shunt run --takeover` with pod-to-pod traffic flowing (both profiles); the
# sk_msg endpoint short-circuit of issue 12 pod-to-pod with real data
# (stream_positions: position-checked both ways on non-blocking clients, FIN,
# resets each way, a blocking client refused; the fallback instead where the
# kernel's probe says no). Then the sockmap burst stress of issue 15 on a
# static listener (burst_stress).
# Every check prints one "SHUNT-VM: RESULT <name> PASS|FAIL <detail>" line on
# the serial console; run_vm.py asserts on them.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /usr/bin /usr/sbin /sbin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
# Modules the profile needs (veth, and on 6.1 sch_ingress + cls_bpf): no
# modprobe here, so the kernel cannot load them on demand.
for ko in /lib/shunt-modules/*.ko; do
	[ -f "$ko" ] && insmod "$ko"
done
PROFILE=$(sed -n 's/.*shunt\.profile=\([a-z]*\).*/\1/p' /proc/cmdline)
POD_TYPE=netkit
[ "$PROFILE" = legacy ] && POD_TYPE=veth

CLIENT=10.200.0.2
SERVER=10.200.0.3
# Dual-stack pods: the IPv6 checks run the same path over the other family.
CLIENT6=fd00:200::2
SERVER6=fd00:200::3
in_client() { nsenter --net=/run/netns/client -- "$@"; }
in_server() { nsenter --net=/run/netns/server -- "$@"; }
# HTTP/1.0 over busybox nc (busybox-static's wget crashes in a fresh netns).
# http_get NETNS_FN HOST PORT PATH -> the raw response
http_get() {
	printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$4" "$2" | $1 timeout 60 nc -w 5 "$2" "$3" 2>&1
}
# http_post_file NETNS_FN HOST PORT PATH FILE
http_post_file() {
	{
		printf 'POST %s HTTP/1.0\r\nHost: %s\r\nContent-Length: %s\r\n\r\n' "$4" "$2" "$(stat -c %s "$5")"
		cat "$5"
	} | $1 timeout 60 nc -w 5 "$2" "$3" 2>&1
}
body() { tr -d '\r' | sed '1,/^$/d'; }
result() {
	if [ "$2" = 0 ]; then echo "SHUNT-VM: RESULT $1 PASS $3"; else echo "SHUNT-VM: RESULT $1 FAIL $3"; fi
}
# wait_ready ADMIN_PORT PID: 0 once shunt's /readyz answers 200, 1 if the
# process died or 20 s passed.
wait_ready() {
	for i in $(seq 1 100); do
		http_get "" 127.0.0.1 $1 /readyz | head -n 1 | grep -q " 200" && return 0
		kill -0 $2 2>/dev/null || return 1
		sleep 0.2
	done
	return 1
}
finish() {
	# The console is printed when a check fails: the proxy's log explains most.
	echo "---- shunt.log ----"
	cat /tmp/shunt.log 2>/dev/null
	if [ -f /tmp/shunt-shortcut.log ]; then
		echo "---- shunt-shortcut.log (the endpoint short-circuit step) ----"
		cat /tmp/shunt-shortcut.log
	fi
	if [ -f /tmp/shunt-takeover.log ]; then
		echo "---- shunt-takeover.log (the process that took over) ----"
		cat /tmp/shunt-takeover.log
	fi
	echo "SHUNT-VM: DONE"
	poweroff -f
	sleep 5
}

echo "SHUNT-VM: kernel $(uname -r), profile $PROFILE"

# The client pod's type is the kernel's choice; the server's is asked for.
out=$(shunt pod add client --ip $CLIENT/24 --ip $CLIENT6/64 2>&1)
echo "$out"
echo "$out" | grep -q "$POD_TYPE"; result pod_add_client_$POD_TYPE $? "$out"
out=$(shunt pod add server --ip $SERVER/24 --ip $SERVER6/64 --type $POD_TYPE 2>&1)
echo "$out"
echo "$out" | grep -q "$POD_TYPE"; result pod_add_server_$POD_TYPE $? "$out"
shunt pod list

# Server pod: busybox httpd on an intercepted (8080) and a direct (9090) port.
# /cgi-bin/peer answers with the address the server saw, /cgi-bin/sum with
# the sha256 of the request body.
for port in 8080 9090; do
	in_server httpd -p $SERVER:$port -h /www
	in_server httpd -p "[$SERVER6]:$port" -h /www
done
BLOB_SUM=$(sha256sum /www/blob | cut -d' ' -f1)
BLOB_SIZE=$(stat -c %s /www/blob)

out=$(http_get in_client $SERVER 9090 /cgi-bin/peer | body)
[ "$out" = "peer=$CLIENT" ]; result direct_without_shunt $? "$out"
out=$(http_get in_client $SERVER6 9090 /cgi-bin/peer | body)
[ "$out" = "peer=[$CLIENT6]" ]; result direct_without_shunt_v6 $? "$out"

# pods_config INTERCEPT_PORTS [PROXY_KEY]: the steering config, on stdout.
pods_config() {
	cat <<YAML
proxy:
  listeners:
    - {name: pods, listen: 127.0.0.1:15001, transparent: true}
    - {name: pods6, listen: "[::1]:15001", transparent: true}
  datapath: sockmap
  upstream_source: client
  ${2:-}
steering:
  intercept_ports: [$1]
  on_proxy_down: fail_closed
admin: {listen: 127.0.0.1:15000}
log: {level: info, access: stdout}
pods:
  - {name: client, ip: [$CLIENT, "$CLIENT6"], labels: {app: client}, dev: sh-client}
  - {name: server, ip: [$SERVER, "$SERVER6"], labels: {app: server}, dev: sh-server}
policy:
  default: allow
YAML
}
pods_config 8080 >/tmp/shunt.yaml
# The sk_msg endpoint short-circuit (proxy.endpoint_shortcut, on by
# default, so the checks below run with it): `shunt version` runs its
# start-up check. Passes when the probe
# answers, yes or a clean no with its reason (this kernel then keeps the
# sk_skb path); the line says which.
shortcut_line=$(shunt version 2>&1 | grep "sk_msg short-circuit")
[ -n "$shortcut_line" ]
result sk_msg_probe $? "$shortcut_line"
shunt run -c /tmp/shunt.yaml >/tmp/shunt.log 2>&1 &
SHUNT_PID=$!
wait_ready 15000 $SHUNT_PID
result shunt_ready $? "$(tail -n 3 /tmp/shunt.log | tr '\n' ' ')"
if [ "$PROFILE" = legacy ]; then
	# attach: auto on a kernel without tcx: one line saying so, clsact filters.
	grep -q "lacks tcx" /tmp/shunt.log && grep -q "sh-client (tc ingress (clsact)" /tmp/shunt.log
	result steering_legacy_tc $? "$(grep -E 'tcx|steering sh-' /tmp/shunt.log | tr '\n' ' ')"
fi

# proxied_checks SERVER_ADDR EXPECTED_PEER SUFFIX: through shunt on 8080.
proxied_checks() {
	out=$(http_get in_client $1 8080 /cgi-bin/peer | body)
	[ "$out" = "peer=$2" ]; result source_preserved$3 $? "$out"
	# The body is the response's last BLOB_SIZE bytes; a short or corrupted
	# transfer changes the hash.
	out=$(http_get in_client $1 8080 /blob | tail -c "$BLOB_SIZE" | sha256sum | cut -d' ' -f1)
	[ "$out" = "$BLOB_SUM" ]; result download_hash$3 $? "$out"
	out=$(http_post_file in_client $1 8080 /cgi-bin/sum /www/blob | body)
	[ "$out" = "$BLOB_SUM" ]; result upload_hash$3 $? "$out"
}
proxied_checks $SERVER $CLIENT ""
out=$(http_get in_client $SERVER 9090 /cgi-bin/peer | body)
[ "$out" = "peer=$CLIENT" ]; result direct_port_with_shunt $? "$out"
proxied_checks $SERVER6 "[$CLIENT6]" _v6
sleep 0.5
grep -q "\"dst\":\"$SERVER:8080\"" /tmp/shunt.log; result proxied_8080 $? "access log has the 8080 connections"
grep -q "\"dst\":\"$SERVER:9090\"" /tmp/shunt.log; [ $? != 0 ]; result not_proxied_9090 $? "no 9090 in the access log"
grep -q "\"dst\":\"\[$SERVER6\]:8080\"" /tmp/shunt.log; result proxied_8080_v6 $? "access log has the IPv6 8080 connections"

# ---- takeover (issue 14), both profiles -----------------------------------
# `shunt run --takeover` while pod-to-pod traffic flows through the proxy:
# a download (/cgi-bin/paced) and an upload (to /cgi-bin/sum) of /www/blob,
# each sent in 16 KiB pieces 0.2 s apart until the takeover is done (then at
# once: 51 s at most; takeovers under emulation took 8.7 and 16 s, most of
# it attaching steering), checked by
# hash; and a loop of new pod-to-pod connections. The two transfers must
# still run when the new process completes and at least one kernel-spliced
# pair must move to it (a transfer that fell back to splice may stay and
# drain in the old process), every new connection must be answered, the old
# process must exit 0. From here on SHUNT_PID is the new process: the checks
# below (fail_closed, rules removed on exit) are then about it.
# paced-blob (run_vm.py) writes /www/blob paced that way.
takeover_check() {
	rm -f /tmp/takeover.done
	(
		printf 'GET /cgi-bin/paced HTTP/1.0\r\nHost: %s\r\n\r\n' $SERVER |
			in_client timeout 150 nc -w 10 $SERVER 8080 2>&1 | tail -c "$BLOB_SIZE" | sha256sum | cut -d' ' -f1
	) >/tmp/takeover-down.out &
	down_pid=$!
	(
		{
			printf 'POST /cgi-bin/sum HTTP/1.0\r\nHost: %s\r\nContent-Length: %s\r\n\r\n' $SERVER "$BLOB_SIZE"
			paced-blob
		} | in_client timeout 150 nc -w 10 $SERVER 8080 2>&1 | body
	) >/tmp/takeover-up.out &
	up_pid=$!
	(
		ok=0
		failed=0
		while [ ! -f /tmp/takeover.done ]; do
			out=$(http_get in_client $SERVER 8080 /cgi-bin/peer | body)
			if [ "$out" = "peer=$CLIENT" ]; then ok=$((ok + 1)); else failed=$((failed + 1)); fi
		done
		echo "$ok $failed"
	) >/tmp/takeover-loop.out &
	loop_pid=$!
	sleep 2
	shunt run -c /tmp/shunt.yaml --takeover >/tmp/shunt-takeover.log 2>&1 &
	NEW_PID=$!
	line=""
	for i in $(seq 1 600); do
		line=$(grep "takeover: complete in" /tmp/shunt-takeover.log)
		[ -n "$line" ] && break
		kill -0 $NEW_PID 2>/dev/null || break
		sleep 0.2
	done
	running=0
	kill -0 $down_pid 2>/dev/null && kill -0 $up_pid 2>/dev/null && running=1
	[ -n "$line" ]; result takeover_complete $? "$line"
	echo "$line" | grep -q "ms: [1-9][0-9]* kernel-spliced" && [ $running = 1 ]
	result takeover_during_transfers $? "transfers running at completion: $running; $line"
	if [ -z "$line" ]; then
		# Not taken over: show why now (the console is cut off if the VM
		# times out later), stop the new process; the old one carries on.
		echo "---- shunt-takeover.log (no takeover) ----"
		cat /tmp/shunt-takeover.log
		echo "---- shunt.log (last 40 lines) ----"
		tail -n 40 /tmp/shunt.log
		kill -KILL $NEW_PID 2>/dev/null
		touch /tmp/takeover.done
		wait $down_pid $up_pid $loop_pid
		return
	fi
	sleep 1
	touch /tmp/takeover.done
	wait $down_pid $up_pid $loop_pid
	out=$(cat /tmp/takeover-down.out)
	[ "$out" = "$BLOB_SUM" ]; result takeover_download_hash $? "$out"
	out=$(cat /tmp/takeover-up.out)
	[ "$out" = "$BLOB_SUM" ]; result takeover_upload_hash $? "$out"
	read ok failed </tmp/takeover-loop.out
	[ "${ok:-0}" -gt 0 ] && [ "$failed" = 0 ]
	result takeover_new_connections $? "$ok answered, $failed failed"
	wait $SHUNT_PID
	rc=$?
	[ $rc = 0 ]; result takeover_old_exited $? "pid $SHUNT_PID exit $rc"
	SHUNT_PID=$NEW_PID
}
takeover_check

# For the console: which data paths served, and why any fell back.
http_get "" 127.0.0.1 15000 /metrics | grep -E "^shunt_(datapath_fallbacks|connections_total|takeover)"
kill -TERM $SHUNT_PID
for i in $(seq 1 100); do kill -0 $SHUNT_PID 2>/dev/null || break; sleep 0.1; done
kill -0 $SHUNT_PID 2>/dev/null; [ $? != 0 ]; result shunt_exited $? "pid $SHUNT_PID"
out=$(http_get in_client $SERVER 8080 /cgi-bin/peer | body)
[ "$out" != "peer=$CLIENT" ]; result fail_closed_blocks $? "got: $out"
out=$(http_get in_client $SERVER6 8080 /cgi-bin/peer | body)
[ "$out" != "peer=[$CLIENT6]" ]; result fail_closed_blocks_v6 $? "got: $out"
out=$(http_get in_client $SERVER 9090 /cgi-bin/peer | body)
[ "$out" = "peer=$CLIENT" ]; result fail_closed_other_ports_flow $? "$out"
ip rule | grep -q fwmark; [ $? != 0 ]; result rules_removed_on_exit $? "$(ip rule | tr '\n' ' ')"

# ---- endpoint short-circuit (issue 12), both profiles ---------------------
# A shunt with proxy.endpoint_shortcut: true on the same pods and steering,
# intercepting 8180-8183, where stream_positions (tests/tools) servers listen
# in the server pod. Its clients in the client pod are non-blocking from
# socket() on, so the capture takes them (busybox nc is blocking and would
# only be refused). Every 8-byte word names its stream offset and the
# receiving end checks each one, both directions.
#   8180: SC_CONNS connections at once, SC_BYTES each way; the clients
#         pause 50 ms before every 256 KiB, where the fence (client quiet,
#         TCP path drained) can open, half of them first, so they can be
#         captured before their first byte, the other half only after
#         SC_BYTES / 4 sent at once (in flight and queued over TCP when the
#         capture comes: the fence must let them through before any
#         redirected byte); the server pauses 50 ms before every MiB.
#         shortcut_positions: every byte in place both ways; shortcut_fin:
#         both ends read to EOF (each FIN passed after every byte);
#         shortcut_access_log: SC_CONNS lines, bytes_up and bytes_down
#         exact; shortcut_path_up, shortcut_path_down: sk_msg on at least
#         one each way (the servers' sockets are local and non-blocking,
#         so they are captured too); shortcut_bytes_metric:
#         shunt_shortcut_bytes_total > 0 each way.
#   8181: the server resets after 1 MiB up while the captured client sends
#         8 MiB: the client must see the reset (shortcut_reset_from_server).
#   8182: the client resets after 1 MiB down while sending: the server must
#         see it (shortcut_reset_from_client).
#   8183: a blocking client and server, both quiet for 3 s (past the
#         capture's retries 5, 55 and 555 ms after the handover, even when
#         a loaded shunt hands over late: a FIN passed on ends the retries
#         uncounted, and a retry that finds the socket past ESTABLISHED
#         counts shortcut_not_established), then 1 MiB each way: neither
#         captured, shortcut_blocking_socket counted once each way, every
#         byte in place, no EAGAIN (shortcut_blocking_refused).
# Where sk_msg_probe said no, shunt runs without the short-circuit (its log
# says why): the same transfers must pass, path_up sk_skb everywhere, the
# metric and the blocking counts 0.
# Sizes from the kernel command line (run_vm.py: SHUNT_VM_SHORTCUT).
SC_CONNS=$(sed -n 's/.*shunt\.shortcut_connections=\([0-9]*\).*/\1/p' /proc/cmdline)
SC_BYTES=$(sed -n 's/.*shunt\.shortcut_bytes=\([0-9]*\).*/\1/p' /proc/cmdline)
SC_CONNS=${SC_CONNS:-4}
SC_BYTES=${SC_BYTES:-4194304}
SC_LOG=/tmp/shunt-shortcut.log
SC_OUT=/tmp/sc
mkdir -p $SC_OUT
SC_YES=0
echo "$shortcut_line" | grep -q "short-circuit *yes" && SC_YES=1
pods_config "8180, 8181, 8182, 8183" "endpoint_shortcut: true" >/tmp/shortcut.yaml
sc_started=$(cut -d' ' -f1 /proc/uptime)
# Simple commands, not functions: $! is the tool's (or its timeout's) pid.
SC_SERVER="nsenter --net=/run/netns/server -- stream_positions server"
# Each client is bounded twice: its own --timeout-s (no progress for 30 s
# fails a connection) and a cap on the whole run, so that a path that
# crawls cannot hold the VM until run_vm.py gives up on it.
SC_CAP=$((60 + SC_BYTES / 262144))
SC_CLIENT="timeout $SC_CAP nsenter --net=/run/netns/client -- stream_positions client"
$SC_SERVER $SERVER:8180 $SC_BYTES --send-chunk 65536 --send-pause-every 1048576 \
	--send-pause-ms 50 --timeout-s 30 >$SC_OUT/server-8180 2>&1 &
sc_servers=$!
$SC_SERVER $SERVER:8181 1048576 --reset-after 1048576 --send-chunk 65536 \
	--send-pause-every 262144 --send-pause-ms 20 --timeout-s 30 >$SC_OUT/server-8181 2>&1 &
sc_servers="$sc_servers $!"
$SC_SERVER $SERVER:8182 $SC_BYTES --expect-reset --send-chunk 65536 \
	--send-pause-every 262144 --send-pause-ms 50 --timeout-s 30 >$SC_OUT/server-8182 2>&1 &
sc_servers="$sc_servers $!"
$SC_SERVER $SERVER:8183 1048576 --blocking --send-pause-ms 3000 --timeout-s 30 \
	>$SC_OUT/server-8183 2>&1 &
sc_servers="$sc_servers $!"
shunt run -c /tmp/shortcut.yaml >$SC_LOG 2>&1 &
SC_PID=$!
wait_ready 15000 $SC_PID
ready=$?
listening=$(cat $SC_OUT/server-* | grep -c LISTENING)
unavailable=$(grep "endpoint short-circuit" $SC_LOG)
if [ $SC_YES = 1 ]; then
	[ $ready = 0 ] && [ "$listening" = 4 ] && [ -z "$unavailable" ] &&
		grep -q "endpoint_shortcut: true" /tmp/shortcut.yaml
else
	[ $ready = 0 ] && [ "$listening" = 4 ] && [ -n "$unavailable" ]
fi
result shortcut_ready $? "probe yes=$SC_YES, $listening servers listening; ${unavailable:-short-circuit loaded}"
sc_metric() { http_get "" 127.0.0.1 15000 /metrics | tr -d '\r' | grep "^$1" | awk '{ s += $2 } END { print s + 0 }'; }
blocking_before=$(sc_metric 'shunt_datapath_fallbacks_total{reason="shortcut_blocking_socket",direction="up"}')
blocking_down_before=$(sc_metric 'shunt_datapath_fallbacks_total{reason="shortcut_blocking_socket",direction="down"}')
$SC_CLIENT $SERVER:8180 $SC_BYTES --connections $((SC_CONNS / 2)) --send-chunk 65536 \
	--send-pause-every 262144 --send-pause-ms 50 --timeout-s 30 >$SC_OUT/client-8180-paused 2>&1 &
sc_clients=$!
$SC_CLIENT $SERVER:8180 $SC_BYTES --connections $((SC_CONNS - SC_CONNS / 2)) --send-chunk 65536 \
	--send-at-once $((SC_BYTES / 4)) --send-pause-every 262144 --send-pause-ms 50 --timeout-s 30 \
	>$SC_OUT/client-8180-at-once 2>&1 &
sc_clients="$sc_clients $!"
$SC_CLIENT $SERVER:8181 8388608 --expect-reset --send-chunk 65536 \
	--send-pause-every 262144 --send-pause-ms 20 --timeout-s 30 >$SC_OUT/client-8181 2>&1 &
sc_clients="$sc_clients $!"
$SC_CLIENT $SERVER:8182 $SC_BYTES --reset-after 1048576 --send-chunk 65536 \
	--send-pause-every 65536 --send-pause-ms 20 --timeout-s 30 >$SC_OUT/client-8182 2>&1 &
sc_clients="$sc_clients $!"
$SC_CLIENT $SERVER:8183 1048576 --blocking --send-pause-ms 3000 --timeout-s 30 \
	>$SC_OUT/client-8183 2>&1 &
sc_clients="$sc_clients $!"
# The clients' timeouts (--timeout-s, SC_CAP) bound this wait.
wait $sc_clients
cat $SC_OUT/client-8180-paused $SC_OUT/client-8180-at-once >$SC_OUT/client-8180
# A server prints its line once its connection is over: give the last ones
# a moment, and the access log its lines.
for i in $(seq 1 50); do
	[ "$(cat $SC_OUT/server-* | grep -c RESULT)" -ge $((SC_CONNS + 3)) ] && break
	sleep 0.2
done
sleep 0.5
for f in $SC_OUT/client-8180 $SC_OUT/client-818[1-3] $SC_OUT/server-*; do echo "== $f"; cat $f; done
# sc_count FILE PATTERN: lines of FILE matching PATTERN.
sc_count() { grep -c -- "$2" $1; }
ok_client=$(sc_count $SC_OUT/client-8180 "received=$SC_BYTES sent=$SC_BYTES changes=0 ok")
ok_server=$(sc_count $SC_OUT/server-8180 "received=$SC_BYTES sent=$SC_BYTES changes=0 ok")
moved=$(cat $SC_OUT/client-8180 $SC_OUT/server-8180 | grep -c "^RESULT .* changes=[1-9]")
[ "$ok_client" = $SC_CONNS ] && [ "$ok_server" = $SC_CONNS ] && [ $moved = 0 ]
result shortcut_positions $? "$SC_CONNS x $SC_BYTES B each way: $ok_client clients and $ok_server servers got every byte in place, $moved connection(s) with bytes out of place"
eof_client=$(sc_count $SC_OUT/client-8180 "received=$SC_BYTES .* ok ")
eof_server=$(sc_count $SC_OUT/server-8180 "received=$SC_BYTES .* ok ")
[ "$eof_client" = $SC_CONNS ] && [ "$eof_server" = $SC_CONNS ]
result shortcut_fin $? "read to EOF after all $SC_BYTES B: $eof_server of $SC_CONNS servers (client FIN), $eof_client clients (server FIN)"
grep "\"dst\":\"$SERVER:8180\"" $SC_LOG >$SC_OUT/access-8180
lines=$(wc -l <$SC_OUT/access-8180)
exact=$(sc_count $SC_OUT/access-8180 "\"bytes_up\":$SC_BYTES,\"bytes_down\":$SC_BYTES,")
[ "$lines" = $SC_CONNS ] && [ "$exact" = $SC_CONNS ]
result shortcut_access_log $? "$lines lines for 8180, $exact with bytes_up and bytes_down $SC_BYTES"
switched=$(sc_count $SC_OUT/access-8180 '"path_up":"sk_msg"')
switched_down=$(sc_count $SC_OUT/access-8180 '"path_down":"sk_msg"')
sc_up=$(sc_metric 'shunt_shortcut_bytes_total{direction="up"}')
sc_down=$(sc_metric 'shunt_shortcut_bytes_total{direction="down"}')
if [ $SC_YES = 1 ]; then
	[ "$switched" -ge 1 ]
	result shortcut_path_up $? "$switched of $lines connections took sk_msg up"
	[ "$switched_down" -ge 1 ]
	result shortcut_path_down $? "$switched_down of $lines connections took sk_msg down (the server pod's socket)"
	[ "$sc_up" -gt 0 ] && [ "$sc_down" -gt 0 ]
	result shortcut_bytes_metric $? "shunt_shortcut_bytes_total up $sc_up, down $sc_down"
else
	[ "$switched" = 0 ] && [ "$(sc_count $SC_OUT/access-8180 '"path_up":"sk_skb"')" = "$lines" ]
	result shortcut_path_up $? "probe said no: $switched of $lines connections took sk_msg up (want 0)"
	[ "$switched_down" = 0 ] && [ "$(sc_count $SC_OUT/access-8180 '"path_down":"sk_skb"')" = "$lines" ]
	result shortcut_path_down $? "probe said no: $switched_down of $lines connections took sk_msg down (want 0)"
	[ "$sc_up" = 0 ] && [ "$sc_down" = 0 ]
	result shortcut_bytes_metric $? "probe said no: shunt_shortcut_bytes_total up $sc_up, down $sc_down (want 0)"
fi
# sc_path PORT [FIELD]: path_up (or FIELD) of the connection to PORT.
sc_path() { grep "\"dst\":\"$SERVER:$1\"" $SC_LOG | sed -n "s/.*\"${2:-path_up}\":\"\([a-z_]*\)\".*/\1/p" | head -n 1; }
grep -q "changes=0 ok reset=seen" $SC_OUT/client-8181 && grep -q "changes=0 ok reset=sent" $SC_OUT/server-8181
result shortcut_reset_from_server $? "client (path_up $(sc_path 8181)): $(grep RESULT $SC_OUT/client-8181 | cut -d' ' -f2-7); server: $(grep RESULT $SC_OUT/server-8181 | cut -d' ' -f2-7)"
grep -q "changes=0 ok reset=seen" $SC_OUT/server-8182 && grep -q "changes=0 ok reset=sent" $SC_OUT/client-8182
result shortcut_reset_from_client $? "server: $(grep RESULT $SC_OUT/server-8182 | cut -d' ' -f2-7); client (path_up $(sc_path 8182)): $(grep RESULT $SC_OUT/client-8182 | cut -d' ' -f2-7)"
blocking=$(($(sc_metric 'shunt_datapath_fallbacks_total{reason="shortcut_blocking_socket",direction="up"}') - blocking_before))
blocking_down=$(($(sc_metric 'shunt_datapath_fallbacks_total{reason="shortcut_blocking_socket",direction="down"}') - blocking_down_before))
want=$SC_YES
grep -q "received=1048576 sent=1048576 changes=0 ok" $SC_OUT/client-8183 &&
	grep -q "received=1048576 sent=1048576 changes=0 ok" $SC_OUT/server-8183 &&
	[ "$blocking" = $want ] && [ "$blocking_down" = $want ] && [ "$(sc_path 8183)" = sk_skb ] &&
	[ "$(sc_path 8183 path_down)" = sk_skb ]
result shortcut_blocking_refused $? "shortcut_blocking_socket up +$blocking, down +$blocking_down (want $want each), path_up $(sc_path 8183), path_down $(sc_path 8183 path_down); client: $(grep RESULT $SC_OUT/client-8183 | cut -d' ' -f2-7 | tr '\n' ' ')"
http_get "" 127.0.0.1 15000 /metrics | grep -E "^shunt_(datapath_fallbacks|shortcut)"
kill $sc_servers 2>/dev/null
wait $sc_servers 2>/dev/null
kill -TERM $SC_PID
for i in $(seq 1 100); do kill -0 $SC_PID 2>/dev/null || break; sleep 0.1; done
wait $SC_PID
rc=$?
secs=$(awk -v a="$sc_started" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.0f", b - a }')
rules=$(ip rule | grep fwmark)
[ $rc = 0 ] && [ -z "$rules" ]; result shortcut_exited $? "exit $rc, fwmark rules left: ${rules:-none}; the step took ${secs}s"

killall httpd 2>/dev/null
shunt pod del client && shunt pod del server
result pod_del $? ""
left=$(ip link | grep -c "sh-"; ls /run/netns; ls -R /sys/fs/bpf/shunt 2>/dev/null | grep -v '^$' | grep -v ':$')
[ "$left" = "0" ]; result nothing_left $? "$left"

# ---- burst_stress: the sockmap handover on this kernel (issue 15) ----------
# The burst case of tests/integration/stress_datapath.py, with burst_peer for
# Python: BURST_CLIENTS clients connect at once, each sends BURST_BYTES right
# after connect() (before any handover), and the upstream answers with their
# SHA-256 and a derived 1 KiB tail, so both directions are checked by hash.
# These kernels are the ones the handover's stranded-bytes kick is for
# (docs/datapath.md, step 7). Each iteration: a fresh shunt on the same ports
# as its SIGKILLed predecessor takes a burst, then resets from both sides,
# then is SIGKILLed itself with held pairs (idle and streaming) open. Then the
# same resets + bursts BURST_ITERATIONS times on one long-lived shunt.
# burst_stress: PASS only with every iteration run and zero failed burst
# clients. reset_propagation: every upstream reset reached its client as an
# RST (burst_peer reset).
# Sizes from the kernel command line (run_vm.py: SHUNT_VM_BURST).
BURST_ITERATIONS=$(sed -n 's/.*shunt\.burst_iterations=\([0-9]*\).*/\1/p' /proc/cmdline)
BURST_CLIENTS=$(sed -n 's/.*shunt\.burst_clients=\([0-9]*\).*/\1/p' /proc/cmdline)
BURST_ITERATIONS=${BURST_ITERATIONS:-10}
BURST_CLIENTS=${BURST_CLIENTS:-50}
BURST_BYTES=4096
BURST_LOG=/tmp/burst-shunt.log
cat >/tmp/burst.yaml <<YAML
proxy:
  listeners:
    - {name: burst, listen: 127.0.0.1:16001, forward: 127.0.0.1:16002}
  datapath: sockmap
  timeouts: {connect: 2s, header: 2s, idle: 1h, drain: 2s}
admin: {listen: 127.0.0.1:16000, control_socket: /run/shunt/burst.sock}
log: {level: info, access: stdout}
policy:
  default: allow
  rules: []
YAML
burst_runs=0
burst_conns=0
burst_failed=0
reset_runs=0
held_conns=0
reset_failed=0
burst_error=""
# burst_shunt_start LABEL: a shunt on /tmp/burst.yaml appending to BURST_LOG,
# its pid in BURST_SHUNT_PID; non-zero if it did not get ready.
burst_shunt_start() {
	echo "==== $1" >>$BURST_LOG
	shunt run -c /tmp/burst.yaml >>$BURST_LOG 2>&1 &
	BURST_SHUNT_PID=$!
	wait_ready 16000 $BURST_SHUNT_PID || { burst_error="$1: shunt not ready"; return 1; }
}
burst_shunt_stop() {
	kill -${2:-TERM} $1 2>/dev/null
	wait $1 2>/dev/null
}
# burst_report WHERE OUTPUT: a failed peer's lines, then what shunt knows about
# the failed clients (access log by source port; /connections for those still
# open), its own lines, its end counters, the upstream's resets and early
# ends, and the kernel's view of the sockets on the two ports (state 01 =
# established, 08 = close-wait, tx_queue:rx_queue in hex; TIME_WAIT left out)
# to tell where stuck bytes sit. A socket that took an RST is unhashed and
# missing from the list even while shunt still holds it.
burst_report() {
	echo "SHUNT-VM: burst_stress failure in $1:"
	echo "$2"
	for sport in $(echo "$2" | sed -n 's/.* source port \([0-9]*\):.*/\1/p'); do
		grep "\"src\":\"127.0.0.1:$sport\"" $BURST_LOG
		http_get "" 127.0.0.1 16000 /connections | body | tr '}' '\n' | grep "127.0.0.1:$sport\""
	done
	grep -v '^{' $BURST_LOG | tail -n 20
	http_get "" 127.0.0.1 16000 /metrics | grep -E "^shunt_(connection_ends|datapath_fallbacks|sockmap)"
	grep -v listening /tmp/burst-server.log | tail -n 10
	echo "/proc/net/tcp, ports 16001 (3E81) and 16002 (3E82):"
	awk '$4 != "06"' /proc/net/tcp | grep -E ':3E8[12] '
}
# burst_resets HOLD: resets through the current instance, HOLD pairs left
# open; the peer's pid in RESET_PID once it says it holds them (its own
# timeouts bound the wait).
burst_resets() {
	burst_peer reset 127.0.0.1 16001 6 $BURST_BYTES $1 >/tmp/burst-reset.out 2>&1 &
	RESET_PID=$!
	reset_runs=$((reset_runs + 1))
	held_conns=$((held_conns + $1))
	while :; do
		alive=0
		kill -0 $RESET_PID 2>/dev/null && alive=1
		# Looked for after the liveness test: with HOLD 0 the peer exits
		# right after printing it.
		grep -q holding /tmp/burst-reset.out && break
		if [ $alive = 0 ]; then
			burst_error="reset peer: $(tr '\n' ' ' </tmp/burst-reset.out)"
			return 1
		fi
		sleep 0.1
	done
	n=$(sed -n 's/.*, \([0-9]*\) failures,.*/\1/p' /tmp/burst-reset.out)
	reset_failed=$((reset_failed + n))
	[ "$n" = 0 ] || burst_report "$2" "$(cat /tmp/burst-reset.out)"
	return 0
}
# burst_kill_after_resets LABEL: resets through the current instance, then
# SIGKILL while the held pairs are open; the next instance starts after it.
burst_kill_after_resets() {
	burst_resets 4 "$1"
	ok=$?
	burst_shunt_stop $BURST_SHUNT_PID KILL
	burst_shunt_stop $RESET_PID
	return $ok
}
# burst_once WHERE: one burst.
burst_once() {
	out=$(burst_peer burst 127.0.0.1 16001 $BURST_CLIENTS $BURST_BYTES 2>&1)
	rc=$?
	burst_runs=$((burst_runs + 1))
	burst_conns=$((burst_conns + BURST_CLIENTS))
	echo "$out" | tail -n 1
	[ $rc = 0 ] && return 0
	n=$(echo "$out" | sed -n 's/.*, \([0-9]*\) failures,.*/\1/p')
	burst_failed=$((burst_failed + ${n:-1}))
	burst_report "$1" "$out"
}

burst_peer server 16002 $BURST_BYTES >/tmp/burst-server.log 2>&1 &
BURST_SERVER_PID=$!
burst_started=$(cut -d' ' -f1 /proc/uptime)
# One shunt start per iteration: each instance starts right after a SIGKILLed
# predecessor (the first after a prologue instance), takes the burst first,
# then the resets and its own SIGKILL.
iter=0
if burst_shunt_start "prologue: resets, then SIGKILL"; then
	burst_kill_after_resets "prologue resets"
fi
while [ $iter -lt $BURST_ITERATIONS ] && [ -z "$burst_error" ]; do
	iter=$((iter + 1))
	burst_shunt_start "iteration $iter: burst after SIGKILL, resets, SIGKILL" || break
	burst_once "iteration $iter (fresh, after SIGKILL)"
	burst_kill_after_resets "iteration $iter resets" || break
	echo "SHUNT-VM: burst_stress fresh iteration $iter done at $(cut -d' ' -f1 /proc/uptime)"
done
fresh_iterations=$iter
iter=0
if [ -z "$burst_error" ] && burst_shunt_start "long-lived"; then
	while [ $iter -lt $BURST_ITERATIONS ]; do
		iter=$((iter + 1))
		burst_resets 0 "long-lived iteration $iter resets" || break
		wait $RESET_PID
		burst_once "long-lived iteration $iter"
	done
	burst_shunt_stop $BURST_SHUNT_PID
	echo "SHUNT-VM: burst_stress long-lived iterations done at $(cut -d' ' -f1 /proc/uptime)"
fi
burst_shunt_stop $BURST_SERVER_PID
if [ -n "$burst_error" ]; then
	echo "SHUNT-VM: burst_stress stopped: $burst_error; the last instance's log:"
	tail -n 40 $BURST_LOG
fi
echo "SHUNT-VM: burst_stress: shunt's warnings and errors over all instances:"
grep -E '\[(warning|error|critical)\]' $BURST_LOG
secs=$(awk -v a="$burst_started" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.0f", b - a }')
detail="$fresh_iterations fresh instances (each after a SIGKILLed one that had resets and held pairs) + $iter long-lived rounds, $burst_runs bursts of $BURST_CLIENTS x $BURST_BYTES B = $burst_conns connections, $burst_failed failed, ${secs}s"
[ "$burst_failed" = 0 ] && [ -z "$burst_error" ] && [ $burst_runs = $((2 * BURST_ITERATIONS)) ]
result burst_stress $? "$detail${burst_error:+; $burst_error}"
[ "$reset_failed" = 0 ] && [ -z "$burst_error" ]
result reset_propagation $? "$((reset_runs * 6)) connections reset ($((reset_runs * 2)) by the upstream), $held_conns held at SIGKILL: $reset_failed upstream resets never reached their client"
finish
