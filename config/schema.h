// Every key the config loader accepts, section by section. The loader checks
// each mapping against its list (an unknown key is an error with a hint),
// and tests/unit/config_doc_test.cpp checks that docs/config.md documents
// every key listed here, so a key added to the loader without its
// documentation fails a test.
#pragma once

#include <array>
#include <span>
#include <string_view>

namespace shunt::config::schema {

using Keys = std::span<const std::string_view>;

inline constexpr std::array<std::string_view, 6> kTop{"proxy", "steering", "admin", "log", "pods", "policy"};
inline constexpr std::array<std::string_view, 8> kProxy{
    "listeners", "datapath", "endpoint_shortcut", "upstream_source", "timeouts", "limits", "http", "http2"};
inline constexpr std::array<std::string_view, 4> kListener{"name", "listen", "transparent", "forward"};
inline constexpr std::array<std::string_view, 6> kTimeouts{"connect", "header",    "idle",
                                                           "drain",   "keepalive", "refuse"};
inline constexpr std::array<std::string_view, 3> kLimits{"max_connections", "max_connections_per_source",
                                                         "max_header_bytes"};
inline constexpr std::array<std::string_view, 4> kHttp{"encoded_slash", "invalid_escape", "unexpected_body",
                                                       "upgrade_protocols"};
inline constexpr std::array<std::string_view, 8> kHttp2{
    "max_concurrent_streams", "stream_window",     "connection_window",
    "max_continuations",      "reset_burst",       "reset_rate",
    "control_frame_burst",    "control_frame_rate"};
inline constexpr std::array<std::string_view, 3> kSteering{"intercept_ports", "on_proxy_down", "attach"};
inline constexpr std::array<std::string_view, 3> kAdmin{"listen", "allow_remote", "control_socket"};
inline constexpr std::array<std::string_view, 2> kLog{"level", "access"};
inline constexpr std::array<std::string_view, 4> kPod{"name", "ip", "labels", "dev"};
inline constexpr std::array<std::string_view, 2> kPolicy{"default", "rules"};
inline constexpr std::array<std::string_view, 7> kRule{"name", "from", "to", "action", "http", "grpc", "tls"};
inline constexpr std::array<std::string_view, 4> kSelector{"pod", "labels", "cidr", "ports"};
inline constexpr std::array<std::string_view, 6> kHttpMatch{"method",     "path", "path_exact",
                                                            "path_regex", "host", "headers"};
inline constexpr std::array<std::string_view, 1> kTls{"sni"};

// A section's path as docs/config.md writes it ("" = top level; `[]` marks
// a list item), and its keys: the doc names each as `path.key`.
struct Section {
  std::string_view path;
  Keys keys;
};
inline constexpr std::array<Section, 17> kSections{{
    {"", kTop},
    {"proxy", kProxy},
    {"proxy.listeners[]", kListener},
    {"proxy.timeouts", kTimeouts},
    {"proxy.limits", kLimits},
    {"proxy.http", kHttp},
    {"proxy.http2", kHttp2},
    {"steering", kSteering},
    {"admin", kAdmin},
    {"log", kLog},
    {"pods[]", kPod},
    {"policy", kPolicy},
    {"policy.rules[]", kRule},
    {"policy.rules[].from", kSelector},
    {"policy.rules[].to", kSelector},
    {"policy.rules[].http[]", kHttpMatch},
    {"policy.rules[].tls", kTls},
}};

}  // namespace shunt::config::schema
