#!/usr/bin/env bash
# Builds and runs the sk_skb overlap tracer (sockmap_trace.bpf.c) until
# interrupted; overlaps also go to /sys/kernel/tracing/trace_pipe.
set -euo pipefail
cd "$(dirname "$0")"
out=${TMPDIR:-/tmp}/shunt-sockmap-trace
mkdir -p "$out"
bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$out/vmlinux.h"
clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -I "$out" -c sockmap_trace.bpf.c -o "$out/sockmap_trace.bpf.o"
cc -O2 -o "$out/loader" loader.c -lbpf
exec "$out/loader" "$out/sockmap_trace.bpf.o"
