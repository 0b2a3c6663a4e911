// The typed form of shunt's YAML config (SPEC.md "Config"). A Config is built
// once by load_config() and never mutated afterwards; the proxy holds it
// through a shared_ptr<const Config> snapshot (see policy/policy.h).
#pragma once

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace shunt::config {

using Millis = std::chrono::milliseconds;
using Endpoint = boost::asio::ip::tcp::endpoint;
using IpAddress = boost::asio::ip::address;

struct Cidr {
  IpAddress network;  // host bits cleared
  unsigned prefix = 0;
  [[nodiscard]] bool contains(const IpAddress& addr) const;
  [[nodiscard]] std::string to_string() const;
};

enum class Datapath { sockmap, splice, copy };
enum class UpstreamSource { client, node };
enum class OnProxyDown { fail_closed, fail_open };
// How steering programs attach to pod devices: tcx/netkit bpf_links (Linux
// 6.6+), legacy clsact tc filters, or whichever the kernel has.
enum class SteeringAttach { auto_detect, tcx, tc };
enum class DefaultAction { deny, allow };
enum class Action { allow, deny };
// What the canonical request model (policy/canonical.h, docs/policy.md)
// does with the escapes that upstreams read differently. Envoy calls the
// first one path_with_escaped_slashes_action.
enum class EncodedSlash {
  reject,  // %2F, %5C or a literal '\' in the path: 400
  keep,    // kept encoded (%2F, %5C): matched and forwarded as such
  decode,  // decoded to '/' before dot-segments are resolved, forwarded decoded
};
enum class InvalidEscape {
  reject,  // %00, or '%' not followed by two hex digits: 400
  keep,    // %00 kept encoded; a stray '%' is forwarded as %25
};
// A body on GET, HEAD, DELETE, OPTIONS or TRACE (RFC 9110: no defined
// semantics). Servers whose handlers never read one (Python's http.server,
// CGI-style frameworks) read it as the next request, which policy never saw.
enum class UnexpectedBody {
  reject,   // Content-Length other than 0, or Transfer-Encoding: 400
  forward,  // framed by its headers and forwarded, like any other body
};

std::string_view to_string(Datapath);
std::string_view to_string(UpstreamSource);
std::string_view to_string(OnProxyDown);
std::string_view to_string(SteeringAttach);
std::string_view to_string(Action);
std::string_view to_string(DefaultAction);
std::string_view to_string(EncodedSlash);
std::string_view to_string(InvalidEscape);
std::string_view to_string(UnexpectedBody);

struct Listener {
  std::string name;
  Endpoint listen;
  bool transparent = false;         // original destination = getsockname()
  std::optional<Endpoint> forward;  // static upstream (exactly one of the two)
};

struct Timeouts {
  Millis connect{5'000};
  Millis header{10'000};
  Millis idle{3'600'000};
  Millis drain{30'000};
  // HTTP-inspected connections only: how long a connection may sit between
  // requests (last response delivered, no byte of the next request yet)
  // before shunt closes it. Much shorter than `idle`, which bounds any
  // silence, so idle keep-alive connections cannot pile up.
  Millis keepalive{15'000};
  // How long a refusal (403, 400, 408, 431) may wait for the responses of
  // the requests before it and for the client to take its status; past
  // it the connection is reset.
  Millis refuse{5'000};
};

struct Limits {
  std::uint32_t max_connections = 100'000;
  // Open connections per client address (IPv4, or IPv6 /128), so one pod
  // cannot hold the whole node's budget. At most max_connections.
  std::uint32_t max_connections_per_source = 1'000;
  std::uint32_t max_header_bytes = 65'536;
};

struct HttpSettings {
  EncodedSlash encoded_slash = EncodedSlash::reject;
  InvalidEscape invalid_escape = InvalidEscape::reject;
  UnexpectedBody unexpected_body = UnexpectedBody::reject;
  // Upgrade protocols (lower-case names, version ignored) that may take a
  // connection out of inspection after a 101. Other Upgrade values are
  // dropped from the forwarded request, so the connection stays HTTP.
  std::vector<std::string> upgrade_protocols{"websocket"};
};

// HTTP/2 (prior-knowledge h2c on connections an `http` rule inspects): the
// SETTINGS shunt advertises to clients and the budgets that end a client
// connection with GOAWAY (docs/policy.md, "HTTP/2"). The same windows are
// advertised to the upstream, so per-connection buffering is bounded by
// them in each direction.
struct Http2Settings {
  std::uint32_t max_concurrent_streams = 100;
  std::uint32_t stream_window = 256 * 1024;           // INITIAL_WINDOW_SIZE, per stream
  std::uint32_t connection_window = 4 * 1024 * 1024;  // all streams of one connection
  // CONTINUATION frames after one HEADERS (CVE-2024-27316 class).
  std::uint32_t max_continuations = 8;
  // Rapid reset (CVE-2023-44487): stream resets the client may cause, as a
  // token bucket (burst, refill per second).
  std::uint32_t reset_burst = 1000;
  std::uint32_t reset_rate = 33;
  // SETTINGS and PING frames (not ACKs) from the client, as a token bucket;
  // twice the burst bounds the ACKs nghttp2 may queue for a peer that does not read.
  std::uint32_t control_frame_burst = 1000;
  std::uint32_t control_frame_rate = 100;
};

struct ProxySettings {
  std::vector<Listener> listeners;
  Datapath datapath = Datapath::sockmap;
  // With datapath sockmap: a local client's own socket sends straight into
  // the upstream socket (sk_msg) once the fence allows; docs/datapath.md,
  // "The endpoint short-circuit". Read at start-up only.
  bool endpoint_shortcut = true;
  UpstreamSource upstream_source = UpstreamSource::client;
  Timeouts timeouts;
  Limits limits;
  HttpSettings http;
  Http2Settings http2;
};

struct Steering {
  bool all_ports = true;             // intercept_ports: all
  std::vector<std::uint16_t> ports;  // when !all_ports
  OnProxyDown on_proxy_down = OnProxyDown::fail_closed;
  SteeringAttach attach = SteeringAttach::auto_detect;
};

struct Admin {
  Endpoint listen{boost::asio::ip::make_address("127.0.0.1"), 15000};
  bool allow_remote = false;  // admin.allow_remote: must be true for a non-loopback listen
  // admin.control_socket: the Unix socket a `shunt run --takeover` meets the
  // running process on (takeover/). An absolute path that fits sun_path.
  std::string control_socket = "/run/shunt/control.sock";
};

struct Log {
  std::string level = "info";     // trace|debug|info|warn|error|off
  std::string access = "stdout";  // stdout | off | FILE path
};

struct Pod {
  std::string name;
  IpAddress ip;  // `ip: A`, or the first of `ip: [A, B]`
  std::map<std::string, std::string> labels;
  std::string dev;  // host-side device steered by BPF; empty = not steered
  // Dual-stack: the other family's address (last, so {name, ip, labels, dev}
  // aggregates stay valid).
  std::vector<IpAddress> extra_ips;

  // Every address of the pod: a selector naming the pod covers all of them.
  [[nodiscard]] std::vector<IpAddress> addresses() const {
    std::vector<IpAddress> out{ip};
    out.insert(out.end(), extra_ips.begin(), extra_ips.end());
    return out;
  }
};

// Where a rule's endpoint is: exactly one selector is set.
struct Selector {
  std::optional<std::string> pod;
  std::map<std::string, std::string> labels;  // non-empty = select by labels
  std::optional<Cidr> cidr;
  std::vector<std::uint16_t> ports;  // only meaningful on `to`; empty = any
};

struct HttpMatch {
  std::optional<std::string> method;  // exact, case-sensitive (HTTP methods are)
  std::optional<std::string> path;    // prefix
  std::optional<std::string> path_exact;
  std::optional<std::string> path_regex;       // RE2, validated at load
  std::optional<std::string> host;             // case-insensitive, port ignored
  std::map<std::string, std::string> headers;  // name lower-cased at load; exact value
  // Set when the entry was written in a rule's `grpc:` list ("pkg.Service/Method"
  // or "pkg.Service/*"): the entry is then method POST with path_exact
  // /pkg.Service/Method or path prefix /pkg.Service/, and messages name it by this.
  std::optional<std::string> grpc;
};

struct TlsMatch {
  std::vector<std::string> sni;  // exact or "*.suffix", lower-cased at load
};

struct Rule {
  std::string name;
  Selector from;
  Selector to;
  Action action = Action::allow;
  std::vector<HttpMatch> http;  // non-empty = decided per HTTP request (`grpc:` entries last)
  std::optional<TlsMatch> tls;  // set = decided on ClientHello SNI
  int line = 0;                 // where the rule starts in the file, for explain
};

struct PolicySpec {
  DefaultAction default_action = DefaultAction::deny;
  std::vector<Rule> rules;
};

struct Config {
  ProxySettings proxy;
  Steering steering;
  Admin admin;
  Log log;
  std::vector<Pod> pods;
  PolicySpec policy;

  std::string source;  // file path, or "<built-in default>"
};

// One problem found while loading, reported as FILE:LINE:COL: message.
struct Diagnostic {
  std::string file;
  int line = 0;    // 1-based; 0 when unknown
  int column = 0;  // 1-based
  std::string message;
  [[nodiscard]] std::string to_string() const;
};

struct LoadResult {
  std::shared_ptr<const Config> config;  // null when diagnostics is non-empty
  std::vector<Diagnostic> diagnostics;   // every error found, not just the first
};

// Parses and validates YAML text; `source_name` is used in diagnostics.
LoadResult parse_config(std::string_view yaml_text, const std::string& source_name);
// Reads the file then parse_config(); unreadable file = one diagnostic.
LoadResult load_config_file(const std::string& path);
// The compiled-in config/examples/default.yaml.
std::string_view builtin_default_yaml();

// Parses "5s", "250ms", "1h", "2m"; nullopt when malformed.
std::optional<Millis> parse_duration(std::string_view text);
// Parses "127.0.0.1:15001" or "[::1]:15001".
std::optional<Endpoint> parse_endpoint(std::string_view text);
std::string to_string(const Endpoint&);
// Parses a literal IPv4 or IPv6 address (no host names); nullopt when malformed.
std::optional<IpAddress> parse_ip(std::string_view text);
// Parses "10.0.0.0/8" or "fd00::/64". Host bits must be clear (a typo such as
// 10.0.0.5/24 is more likely than intent), so those are rejected as well.
std::optional<Cidr> parse_cidr(std::string_view text);
// `addr` with every bit after the first `prefix` bits cleared.
IpAddress masked(const IpAddress& addr, unsigned prefix);

}  // namespace shunt::config
