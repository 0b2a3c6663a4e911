// libbpf writes its own diagnostics ("libbpf: prog 'x': failed to load...")
// straight to stderr unless told otherwise: raw lines that appear even when
// shunt then falls back cleanly or loads BPF only to probe. Once routed,
// they go through spdlog at debug level, so `log.level: debug` shows them
// and nothing else does; the error shunt acts on is reported by the caller
// with what happens instead.
#pragma once

namespace shunt::bpf {

// Installs the print callback; call once, before any libbpf call.
void route_libbpf_log();

}  // namespace shunt::bpf
