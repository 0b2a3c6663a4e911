#!/bin/busybox sh
# PID 1 of the steering test VM (busybox), see run_vm.py. Profile from the
# kernel command line (shunt.profile=): "netkit" expects netkit pods and
# tcx, "legacy" (Linux 6.1) veth pods and legacy clsact filters. Creates two
# pods with the real `shunt pod add`, runs `shunt run` with steering, checks
# pod-to-pod traffic through the proxy and without it, fail_closed with the
# proxy stopped, and that `pod del` + proxy exit leave nothing behind.
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
finish() {
	# The console is printed when a check fails: the proxy's log explains most.
	echo "---- shunt.log ----"
	cat /tmp/shunt.log 2>/dev/null
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

cat >/tmp/shunt.yaml <<YAML
proxy:
  listeners:
    - {name: pods, listen: 127.0.0.1:15001, transparent: true}
    - {name: pods6, listen: "[::1]:15001", transparent: true}
  datapath: sockmap
  upstream_source: client
steering:
  intercept_ports: [8080]
  on_proxy_down: fail_closed
admin: {listen: 127.0.0.1:15000}
log: {level: info, access: stdout}
pods:
  - {name: client, ip: [$CLIENT, "$CLIENT6"], labels: {app: client}, dev: sh-client}
  - {name: server, ip: [$SERVER, "$SERVER6"], labels: {app: server}, dev: sh-server}
policy:
  default: allow
YAML
shunt run -c /tmp/shunt.yaml >/tmp/shunt.log 2>&1 &
SHUNT_PID=$!
ready=1
for i in $(seq 1 100); do
	if http_get "" 127.0.0.1 15000 /readyz | head -n 1 | grep -q " 200"; then ready=0; break; fi
	kill -0 $SHUNT_PID 2>/dev/null || break
	sleep 0.2
done
result shunt_ready $ready "$(tail -n 3 /tmp/shunt.log | tr '\n' ' ')"
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

# For the console: which data paths served, and why any fell back.
http_get "" 127.0.0.1 15000 /metrics | grep -E "^shunt_(datapath_fallbacks|connections_total)"
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

killall httpd 2>/dev/null
shunt pod del client && shunt pod del server
result pod_del $? ""
left=$(ip link | grep -c "sh-"; ls /run/netns; ls -R /sys/fs/bpf/shunt 2>/dev/null | grep -v '^$' | grep -v ':$')
[ "$left" = "0" ]; result nothing_left $? "$left"
finish
