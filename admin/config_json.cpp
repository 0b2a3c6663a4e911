#include "admin/config_json.h"

#include "common/json_writer.h"

namespace shunt::proxy {

namespace {

void write_labels(JsonWriter& w, const std::map<std::string, std::string>& labels) {
  w.begin_object();
  for (const auto& [k, v] : labels) w.field(k, v);
  w.end_object();
}

void write_ports(JsonWriter& w, const std::vector<std::uint16_t>& ports) {
  w.begin_array();
  for (auto p : ports) w.value(static_cast<unsigned>(p));
  w.end_array();
}

void write_selector(JsonWriter& w, const config::Selector& s) {
  w.begin_object();
  if (s.pod) w.field("pod", *s.pod);
  if (!s.labels.empty()) {
    w.key("labels");
    write_labels(w, s.labels);
  }
  if (s.cidr) w.field("cidr", s.cidr->to_string());
  if (!s.ports.empty()) {
    w.key("ports");
    write_ports(w, s.ports);
  }
  w.end_object();
}

// A `grpc:` entry appears as what it compiles to, with `grpc` naming it.
void write_http(JsonWriter& w, const config::HttpMatch& m) {
  w.begin_object();
  if (m.grpc) w.field("grpc", *m.grpc);
  if (m.method) w.field("method", *m.method);
  if (m.path) w.field("path", *m.path);
  if (m.path_exact) w.field("path_exact", *m.path_exact);
  if (m.path_regex) w.field("path_regex", *m.path_regex);
  if (m.host) w.field("host", *m.host);
  if (!m.headers.empty()) {
    w.key("headers");
    write_labels(w, m.headers);
  }
  w.end_object();
}

void write_rule(JsonWriter& w, const config::Rule& r) {
  w.begin_object();
  w.field("name", r.name);
  w.key("from");
  write_selector(w, r.from);
  w.key("to");
  write_selector(w, r.to);
  w.field("action", config::to_string(r.action));
  if (!r.http.empty()) {
    w.key("http").begin_array();
    for (const auto& m : r.http) write_http(w, m);
    w.end_array();
  }
  if (r.tls) {
    w.key("tls").begin_object().key("sni").begin_array();
    for (const auto& name : r.tls->sni) w.value(name);
    w.end_array().end_object();
  }
  w.end_object();
}

}  // namespace

std::string format_duration(config::Millis d) {
  const auto ms = d.count();
  if (ms != 0 && ms % 3'600'000 == 0) return std::to_string(ms / 3'600'000) + "h";
  if (ms != 0 && ms % 60'000 == 0) return std::to_string(ms / 60'000) + "m";
  if (ms % 1'000 == 0) return std::to_string(ms / 1'000) + "s";
  return std::to_string(ms) + "ms";
}

std::string config_to_json(const config::Config& c, std::uint64_t generation) {
  JsonWriter w;
  w.begin_object();
  w.field("generation", generation);
  w.field("source", c.source);

  w.key("proxy").begin_object();
  w.key("listeners").begin_array();
  for (const auto& l : c.proxy.listeners) {
    w.begin_object();
    w.field("name", l.name);
    w.field("listen", config::to_string(l.listen));
    w.field("transparent", l.transparent);
    if (l.forward) w.field("forward", config::to_string(*l.forward));
    w.end_object();
  }
  w.end_array();
  w.field("datapath", config::to_string(c.proxy.datapath));
  w.field("upstream_source", config::to_string(c.proxy.upstream_source));
  const auto& t = c.proxy.timeouts;
  w.key("timeouts").begin_object();
  w.field("connect", format_duration(t.connect));
  w.field("header", format_duration(t.header));
  w.field("idle", format_duration(t.idle));
  w.field("drain", format_duration(t.drain));
  w.field("keepalive", format_duration(t.keepalive));
  w.field("refuse", format_duration(t.refuse));
  w.end_object();
  w.key("limits").begin_object();
  w.field("max_connections", c.proxy.limits.max_connections);
  w.field("max_connections_per_source", c.proxy.limits.max_connections_per_source);
  w.field("max_header_bytes", c.proxy.limits.max_header_bytes);
  w.end_object();
  w.key("http").begin_object();
  w.field("encoded_slash", config::to_string(c.proxy.http.encoded_slash));
  w.field("invalid_escape", config::to_string(c.proxy.http.invalid_escape));
  w.field("unexpected_body", config::to_string(c.proxy.http.unexpected_body));
  w.key("upgrade_protocols").begin_array();
  for (const auto& p : c.proxy.http.upgrade_protocols) w.value(p);
  w.end_array();
  w.end_object();
  const config::Http2Settings& h2 = c.proxy.http2;
  w.key("http2").begin_object();
  w.field("max_concurrent_streams", h2.max_concurrent_streams);
  w.field("stream_window", h2.stream_window);
  w.field("connection_window", h2.connection_window);
  w.field("max_continuations", h2.max_continuations);
  w.field("reset_burst", h2.reset_burst);
  w.field("reset_rate", h2.reset_rate);
  w.field("control_frame_burst", h2.control_frame_burst);
  w.field("control_frame_rate", h2.control_frame_rate);
  w.end_object();
  w.end_object();

  w.key("steering").begin_object();
  if (c.steering.all_ports) {
    w.field("intercept_ports", "all");
  } else {
    w.key("intercept_ports");
    write_ports(w, c.steering.ports);
  }
  w.field("on_proxy_down", config::to_string(c.steering.on_proxy_down));
  w.field("attach", config::to_string(c.steering.attach));
  w.end_object();

  w.key("admin").begin_object();
  w.field("listen", config::to_string(c.admin.listen));
  w.field("allow_remote", c.admin.allow_remote);
  w.field("control_socket", c.admin.control_socket);
  w.end_object();

  w.key("log").begin_object();
  w.field("level", c.log.level);
  w.field("access", c.log.access);
  w.end_object();

  w.key("pods").begin_array();
  for (const auto& p : c.pods) {
    w.begin_object();
    w.field("name", p.name);
    if (p.extra_ips.empty()) {
      w.field("ip", p.ip.to_string());
    } else {
      w.key("ip").begin_array();
      for (const auto& ip : p.addresses()) w.value(ip.to_string());
      w.end_array();
    }
    w.key("labels");
    write_labels(w, p.labels);
    if (!p.dev.empty()) w.field("dev", p.dev);
    w.end_object();
  }
  w.end_array();

  w.key("policy").begin_object();
  w.field("default", config::to_string(c.policy.default_action));
  w.key("rules").begin_array();
  for (const auto& r : c.policy.rules) write_rule(w, r);
  w.end_array();
  w.end_object();

  w.end_object();
  return w.take();
}

}  // namespace shunt::proxy
