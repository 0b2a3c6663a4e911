// YAML -> Config with strict validation (SPEC.md "Config").
//
// The loader never stops at the first problem: every section is walked, each
// error becomes a Diagnostic pointing at the offending node, and the caller
// gets them all sorted by position. A field that fails validation keeps its
// default so the walk can continue; the resulting Config is discarded anyway
// when any diagnostic exists.
#include "config/config.h"
#include "config/schema.h"

#include <re2/re2.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <initializer_list>
#include <map>
#include <unordered_map>

namespace shunt::config {
namespace {

using Node = YAML::Node;

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

std::string_view type_name(const Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Scalar:
      return "a scalar";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

// Edit distance, to suggest the key the user probably meant.
std::size_t distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string join(const std::vector<std::string>& items, std::string_view sep = ", ") {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += sep;
    out += item;
  }
  return out;
}

// Names used in metrics labels, log lines and netns names: keep them plain.
bool is_plain_name(std::string_view s) {
  if (s.empty() || s.size() > 63) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.';
  });
}

// Why `text` is not a CIDR; a host-bits typo gets the network it probably meant.
std::string cidr_problem(const std::string& text) {
  const auto slash = text.find('/');
  if (slash != std::string::npos) {
    const auto ip = parse_ip(std::string_view(text).substr(0, slash));
    const std::string bits = text.substr(slash + 1);
    unsigned prefix = 0;
    const auto [end, ec] = std::from_chars(bits.data(), bits.data() + bits.size(), prefix);
    if (ip && !bits.empty() && ec == std::errc{} && end == bits.data() + bits.size()) {
      const unsigned max = ip->is_v4() ? 32 : 128;
      if (prefix > max) {
        return "CIDR '" + text + "' has prefix length " + bits + ", at most " + std::to_string(max) +
               " for IPv" + (ip->is_v4() ? "4" : "6");
      }
      return "CIDR '" + text + "' has host bits set; did you mean " + masked(*ip, prefix).to_string() + "/" +
             bits + "?";
    }
  }
  return "'" + text + "' is not a CIDR such as 10.0.0.0/8 or fd00::/64";
}

bool is_http_token(std::string_view s) {
  static constexpr std::string_view kExtra = "!#$%&'*+-.^_`|~";
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           kExtra.find(c) != std::string_view::npos;
  });
}

// A value together with where it sits. Empty values (`key:` with nothing
// after it) carry yaml-cpp's mark of the *next* token, so errors about them
// point at the key instead.
struct Field {
  std::string name;  // the key, or "item N" inside a list
  Node key;
  Node value;
  YAML::Mark key_mark;

  [[nodiscard]] YAML::Mark mark() const {
    const YAML::Mark m = value.Mark();
    if (value.IsNull() || m.line < 0) return key_mark;
    return m;
  }
};

class Loader {
 public:
  explicit Loader(std::string file) : file_(std::move(file)) {}

  void error(const YAML::Mark& mark, std::string message) {
    Diagnostic d;
    d.file = file_;
    // yaml-cpp counts from 0; editors and compilers count from 1.
    d.line = mark.line >= 0 ? mark.line + 1 : 0;
    d.column = mark.column >= 0 ? mark.column + 1 : 0;
    d.message = std::move(message);
    diagnostics_.push_back(std::move(d));
  }
  void error(const Field& f, std::string message) { error(f.mark(), std::move(message)); }

  std::vector<Diagnostic> take_diagnostics() {
    std::stable_sort(diagnostics_.begin(), diagnostics_.end(), [](const Diagnostic& a, const Diagnostic& b) {
      return std::tie(a.line, a.column) < std::tie(b.line, b.column);
    });
    return std::move(diagnostics_);
  }

  Config load(const Node& root);

 private:
  // A mapping checked against the keys its section allows: unknown and
  // duplicated keys are reported once, here, so section code only asks for
  // what it knows.
  class Fields {
   public:
    Fields(Loader& loader, const Field& self, std::string_view section, schema::Keys allowed)
        : loader_(loader), self_(self) {
      if (self.value.IsNull()) return;  // `section:` with nothing: all defaults
      if (!self.value.IsMap()) {
        loader.error(self,
                     std::string(section) + " must be a map, got " + std::string(type_name(self.value)));
        return;
      }
      for (auto it = self.value.begin(); it != self.value.end(); ++it) {
        const Node key = it->first;
        const std::string name = key.IsScalar() ? key.Scalar() : std::string();
        if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
          std::string message = "unknown key '" + name + "' in " + std::string(section);
          std::string_view best;
          std::size_t best_distance = 3;
          for (const auto candidate : allowed) {
            const std::size_t d = distance(name, candidate);
            if (d < best_distance) {
              best = candidate;
              best_distance = d;
            }
          }
          if (!best.empty()) {
            message += " (did you mean '" + std::string(best) + "'?)";
          } else {
            std::vector<std::string> names(allowed.begin(), allowed.end());
            message += " (expected: " + join(names) + ")";
          }
          loader.error(key.Mark(), std::move(message));
          continue;
        }
        if (fields_.count(name) != 0) {
          loader.error(key.Mark(), "duplicate key '" + name + "' in " + std::string(section));
          continue;
        }
        fields_.emplace(name, Field{name, key, it->second, key.Mark()});
      }
    }

    [[nodiscard]] const Field* get(const std::string& key) const {
      const auto it = fields_.find(key);
      return it == fields_.end() ? nullptr : &it->second;
    }
    const Field* require(const std::string& key, std::string_view what) {
      const Field* f = get(key);
      if (f == nullptr && (self_.value.IsMap() || self_.value.IsNull())) {
        loader_.error(self_, std::string(what) + " is missing required key '" + key + "'");
      }
      return f;
    }

   private:
    Loader& loader_;
    const Field& self_;
    std::unordered_map<std::string, Field> fields_;
  };

  // Items of a list; `key:` with nothing is an empty list.
  std::vector<Field> items(const Field& f) {
    std::vector<Field> out;
    if (f.value.IsNull()) return out;
    if (!f.value.IsSequence()) {
      error(f, "'" + f.name + "' must be a list, got " + std::string(type_name(f.value)));
      return out;
    }
    std::size_t i = 0;
    for (const Node& item : f.value) {
      Field field{f.name + "[" + std::to_string(i++) + "]", Node(), item, f.mark()};
      // A stray `-` would otherwise be an entry with every default, or vanish.
      if (item.IsNull()) {
        error(field, "'" + field.name + "' is empty");
        continue;
      }
      out.push_back(std::move(field));
    }
    return out;
  }

  std::optional<std::string> string(const Field& f) {
    if (!f.value.IsScalar()) {
      error(f, "'" + f.name + "' must be a string, got " + std::string(type_name(f.value)));
      return std::nullopt;
    }
    return f.value.Scalar();
  }

  std::optional<std::string> nonempty_string(const Field& f) {
    auto s = string(f);
    if (s && s->empty()) {
      error(f, "'" + f.name + "' must not be empty");
      return std::nullopt;
    }
    return s;
  }

  std::optional<bool> boolean(const Field& f) {
    if (f.value.IsScalar()) {
      const std::string s = lower(f.value.Scalar());
      if (s == "true") return true;
      if (s == "false") return false;
    }
    error(f, "'" + f.name + "' must be true or false");
    return std::nullopt;
  }

  std::optional<std::uint64_t> integer(const Field& f, std::uint64_t min, std::uint64_t max) {
    if (f.value.IsScalar()) {
      const std::string& s = f.value.Scalar();
      std::uint64_t v = 0;
      const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
      if (ec == std::errc{} && end == s.data() + s.size() && !s.empty()) {
        if (v >= min && v <= max) return v;
        error(f, "'" + f.name + "' is " + s + ", must be between " + std::to_string(min) + " and " +
                     std::to_string(max));
        return std::nullopt;
      }
    }
    error(f, "'" + f.name + "' must be an integer between " + std::to_string(min) + " and " +
                 std::to_string(max));
    return std::nullopt;
  }

  std::optional<std::uint16_t> port(const Field& f) {
    if (f.value.IsScalar()) {
      const std::string& s = f.value.Scalar();
      std::int64_t v = 0;
      const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
      if (ec == std::errc{} && end == s.data() + s.size() && !s.empty()) {
        if (v >= 1 && v <= 65535) return static_cast<std::uint16_t>(v);
        error(f, "port " + s + " is out of range (1-65535)");
        return std::nullopt;
      }
    }
    error(f, "'" + f.name + "' must be a port number (1-65535)");
    return std::nullopt;
  }

  std::vector<std::uint16_t> port_list(const Field& f) {
    std::vector<std::uint16_t> out;
    if (f.value.IsSequence() && f.value.size() == 0) {
      error(f, "'" + f.name + "' is an empty list; omit it to mean any port");
      return out;
    }
    for (const Field& item : items(f)) {
      if (auto p = port(item)) out.push_back(*p);
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
  }

  std::optional<Millis> duration(const Field& f) {
    if (f.value.IsScalar()) {
      if (auto d = parse_duration(f.value.Scalar())) {
        if (d->count() > 0) return d;
        error(f, "'" + f.name + "' must be greater than zero");
        return std::nullopt;
      }
    }
    error(f, "'" + f.name + "' must be a duration such as 250ms, 5s, 2m or 1h");
    return std::nullopt;
  }

  std::optional<Endpoint> endpoint(const Field& f) {
    if (f.value.IsScalar()) {
      if (auto ep = parse_endpoint(f.value.Scalar())) return ep;
      error(f, "'" + f.name + "': invalid address '" + f.value.Scalar() +
                   "', expected IPv4:PORT or [IPv6]:PORT with port 1-65535");
      return std::nullopt;
    }
    error(f, "'" + f.name + "' must be an address such as 127.0.0.1:15001 or [::1]:15001");
    return std::nullopt;
  }

  template <typename E>
  std::optional<E> choice(const Field& f, std::initializer_list<std::pair<std::string_view, E>> options) {
    std::vector<std::string> names;
    for (const auto& [name, value] : options) {
      if (f.value.IsScalar() && f.value.Scalar() == name) return value;
      names.emplace_back(name);
    }
    const std::string got =
        f.value.IsScalar() ? "'" + f.value.Scalar() + "'" : std::string(type_name(f.value));
    error(f, "'" + f.name + "' must be one of " + join(names, " | ") + ", got " + got);
    return std::nullopt;
  }

  std::map<std::string, std::string> string_map(const Field& f, bool lower_keys) {
    std::map<std::string, std::string> out;
    if (!f.value.IsMap()) {
      error(f, "'" + f.name + "' must be a map of strings, got " + std::string(type_name(f.value)));
      return out;
    }
    for (auto it = f.value.begin(); it != f.value.end(); ++it) {
      const Field key{f.name + " key", Node(), it->first, it->first.Mark()};
      const auto name = nonempty_string(key);
      if (!name) continue;
      const Field value{*name, it->first, it->second, it->first.Mark()};
      auto text = string(value);
      if (!text) continue;
      const std::string stored = lower_keys ? lower(*name) : *name;
      if (!out.emplace(stored, *text).second) {
        error(key, "duplicate key '" + *name + "' in '" + f.name + "'");
      }
    }
    return out;
  }

  void load_proxy(const Field& f, ProxySettings& proxy);
  void load_listener(const Field& f, Listener& l);
  void load_http_settings(const Field& f, HttpSettings& http);
  void load_http2_settings(const Field& f, Http2Settings& http2);
  void load_steering(const Field& f, Steering& steering);
  void load_admin(const Field& f, Admin& admin);
  void load_log(const Field& f, Log& log);
  void load_pod(const Field& f, Pod& pod);
  void load_policy(const Field& f, PolicySpec& policy);
  void load_rule(const Field& f, Rule& rule);
  void load_selector(const Field& f, Selector& s, bool is_to);
  void load_http(const Field& f, HttpMatch& m);
  void load_grpc(const Field& f, HttpMatch& m);
  void load_tls(const Field& f, TlsMatch& m);

  std::string file_;
  std::vector<Diagnostic> diagnostics_;
  // Pod references are checked after the whole file is read, so `pods` may
  // come after `policy` in the file.
  std::vector<Field> pod_references_;
};

Config Loader::load(const Node& root) {
  Config config;
  const Field top{"config", Node(), root, root.Mark()};
  if (!root.IsMap()) {
    error(top, root.IsNull() ? "the config is empty" : "the config must be a map of sections");
    return config;
  }
  Fields fields(*this, top, "the config", schema::kTop);

  if (const Field* f = fields.require("proxy", "the config")) load_proxy(*f, config.proxy);
  if (const Field* f = fields.get("steering")) load_steering(*f, config.steering);
  if (const Field* f = fields.get("admin")) load_admin(*f, config.admin);
  if (const Field* f = fields.get("log")) load_log(*f, config.log);

  if (const Field* f = fields.get("pods")) {
    std::map<std::string, int> names;  // name -> line
    std::map<IpAddress, std::string> ips;
    for (const Field& item : items(*f)) {
      Pod pod;
      load_pod(item, pod);
      if (pod.name.empty()) continue;
      const int line = item.mark().line + 1;
      if (const auto [it, fresh] = names.emplace(pod.name, line); !fresh) {
        error(item, "duplicate pod name '" + pod.name + "' (first defined at line " +
                        std::to_string(it->second) + ")");
        continue;
      }
      for (const IpAddress& ip : pod.addresses()) {
        if (ip.is_unspecified()) continue;
        if (const auto [it, fresh] = ips.emplace(ip, pod.name); !fresh) {
          error(item, "pod '" + pod.name + "' has the same IP " + ip.to_string() + " as pod '" + it->second +
                          "': pods are identified by IP");
        }
      }
      config.pods.push_back(std::move(pod));
    }
  }

  if (const Field* f = fields.get("policy")) load_policy(*f, config.policy);

  for (const Field& ref : pod_references_) {
    const std::string& name = ref.value.Scalar();
    const bool known =
        std::any_of(config.pods.begin(), config.pods.end(), [&](const Pod& p) { return p.name == name; });
    if (!known) {
      std::vector<std::string> names;
      for (const Pod& p : config.pods) names.push_back(p.name);
      error(ref,
            "unknown pod '" + name + "'" +
                (names.empty() ? std::string(" (no pods are defined)") : " (pods: " + join(names) + ")"));
    }
  }

  // Two sockets cannot share an address; catching it here beats EADDRINUSE
  // at startup with no line number.
  std::map<Endpoint, std::string> bound;
  for (const Listener& l : config.proxy.listeners) bound.emplace(l.listen, l.name);
  if (const auto it = bound.find(config.admin.listen); it != bound.end()) {
    const Field* admin = fields.get("admin");
    error(admin != nullptr ? admin->mark() : root.Mark(),
          "admin.listen " + to_string(config.admin.listen) + " is also listener '" + it->second + "'");
  }
  return config;
}

void Loader::load_proxy(const Field& f, ProxySettings& proxy) {
  Fields fields(*this, f, "proxy", schema::kProxy);
  if (const Field* l = fields.require("listeners", "proxy")) {
    const auto list = items(*l);
    if (list.empty() && (l->value.IsNull() || l->value.IsSequence())) {
      error(*l, "proxy.listeners needs at least one listener");
    }
    std::map<std::string, int> names;
    std::map<Endpoint, std::string> addresses;
    for (const Field& item : list) {
      Listener listener;
      load_listener(item, listener);
      if (listener.name.empty()) continue;
      if (const auto [it, fresh] = names.emplace(listener.name, item.mark().line + 1); !fresh) {
        error(item, "duplicate listener name '" + listener.name + "' (first defined at line " +
                        std::to_string(it->second) + ")");
        continue;
      }
      if (listener.listen.port() != 0) {
        if (const auto [it, fresh] = addresses.emplace(listener.listen, listener.name); !fresh) {
          error(item, "listener '" + listener.name + "' uses the same address " + to_string(listener.listen) +
                          " as listener '" + it->second + "'");
        }
      }
      proxy.listeners.push_back(std::move(listener));
    }
  }
  if (const Field* d = fields.get("datapath")) {
    if (auto v = choice<Datapath>(
            *d, {{"sockmap", Datapath::sockmap}, {"splice", Datapath::splice}, {"copy", Datapath::copy}})) {
      proxy.datapath = *v;
    }
  }
  if (const Field* e = fields.get("endpoint_shortcut")) {
    if (const auto b = boolean(*e)) proxy.endpoint_shortcut = *b;
  }
  if (const Field* u = fields.get("upstream_source")) {
    if (auto v = choice<UpstreamSource>(
            *u, {{"client", UpstreamSource::client}, {"node", UpstreamSource::node}})) {
      proxy.upstream_source = *v;
    }
  }
  if (const Field* t = fields.get("timeouts")) {
    Fields timeouts(*this, *t, "proxy.timeouts", schema::kTimeouts);
    const std::pair<const char*, Millis*> slots[] = {
        {"connect", &proxy.timeouts.connect},     {"header", &proxy.timeouts.header},
        {"idle", &proxy.timeouts.idle},           {"drain", &proxy.timeouts.drain},
        {"keepalive", &proxy.timeouts.keepalive}, {"refuse", &proxy.timeouts.refuse}};
    for (const auto& [key, slot] : slots) {
      if (const Field* v = timeouts.get(key)) {
        if (auto d = duration(*v)) *slot = *d;
      }
    }
  }
  if (const Field* h = fields.get("http")) load_http_settings(*h, proxy.http);
  if (const Field* h = fields.get("http2")) load_http2_settings(*h, proxy.http2);
  if (const Field* l = fields.get("limits")) {
    Fields limits(*this, *l, "proxy.limits", schema::kLimits);
    if (const Field* v = limits.get("max_connections")) {
      if (auto n = integer(*v, 1, 10'000'000)) proxy.limits.max_connections = static_cast<std::uint32_t>(*n);
    }
    const Field* per_source = limits.get("max_connections_per_source");
    if (per_source != nullptr) {
      if (auto n = integer(*per_source, 1, 10'000'000)) {
        proxy.limits.max_connections_per_source = static_cast<std::uint32_t>(*n);
      }
    }
    if (proxy.limits.max_connections_per_source > proxy.limits.max_connections) {
      if (per_source != nullptr) {
        // Said explicitly, it is a mistake: the cap could never apply.
        error(*per_source,
              "'max_connections_per_source' (" + std::to_string(proxy.limits.max_connections_per_source) +
                  ") is larger than max_connections (" + std::to_string(proxy.limits.max_connections) + ")");
      } else {
        // The default follows a small max_connections down.
        proxy.limits.max_connections_per_source = proxy.limits.max_connections;
      }
    }
    if (const Field* v = limits.get("max_header_bytes")) {
      // Below 1 KiB ordinary browsers fail; above 1 MiB a slow client pins
      // that much memory per connection.
      if (auto n = integer(*v, 1024, 1 << 20)) proxy.limits.max_header_bytes = static_cast<std::uint32_t>(*n);
    }
  }
}

void Loader::load_http2_settings(const Field& f, Http2Settings& http2) {
  Fields fields(*this, f, "proxy.http2", schema::kHttp2);
  // Bounds: a window below 16 KiB (one default frame) or a stream limit of 0
  // would stall every client; above them one connection pins too much memory.
  const struct {
    const char* key;
    std::uint32_t* slot;
    std::uint64_t min, max;
  } slots[] = {
      {"max_concurrent_streams", &http2.max_concurrent_streams, 1, 10'000},
      {"stream_window", &http2.stream_window, 16 * 1024, 16 << 20},
      {"connection_window", &http2.connection_window, 64 * 1024, 256 << 20},
      {"max_continuations", &http2.max_continuations, 1, 1'000},
      {"reset_burst", &http2.reset_burst, 1, 1'000'000},
      {"reset_rate", &http2.reset_rate, 1, 1'000'000},
      {"control_frame_burst", &http2.control_frame_burst, 1, 1'000'000},
      {"control_frame_rate", &http2.control_frame_rate, 1, 1'000'000},
  };
  for (const auto& s : slots) {
    if (const Field* v = fields.get(s.key)) {
      if (auto n = integer(*v, s.min, s.max)) *s.slot = static_cast<std::uint32_t>(*n);
    }
  }
  if (const Field* v = fields.get("connection_window");
      v != nullptr && http2.connection_window < http2.stream_window) {
    error(*v, "'connection_window' (" + std::to_string(http2.connection_window) +
                  ") is smaller than stream_window (" + std::to_string(http2.stream_window) +
                  "): one stream could never use its window");
  }
}

void Loader::load_http_settings(const Field& f, HttpSettings& http) {
  Fields fields(*this, f, "proxy.http", schema::kHttp);
  if (const Field* v = fields.get("encoded_slash")) {
    if (auto e = choice<EncodedSlash>(*v, {{"reject", EncodedSlash::reject},
                                           {"keep", EncodedSlash::keep},
                                           {"decode", EncodedSlash::decode}})) {
      http.encoded_slash = *e;
    }
  }
  if (const Field* v = fields.get("invalid_escape")) {
    if (auto e =
            choice<InvalidEscape>(*v, {{"reject", InvalidEscape::reject}, {"keep", InvalidEscape::keep}})) {
      http.invalid_escape = *e;
    }
  }
  if (const Field* v = fields.get("unexpected_body")) {
    if (auto e = choice<UnexpectedBody>(
            *v, {{"reject", UnexpectedBody::reject}, {"forward", UnexpectedBody::forward}})) {
      http.unexpected_body = *e;
    }
  }
  if (const Field* v = fields.get("upgrade_protocols")) {
    // An empty list is meaningful: no upgrade ever leaves inspection.
    http.upgrade_protocols.clear();
    for (const Field& item : items(*v)) {
      auto name = nonempty_string(item);
      if (!name) continue;
      const std::string n = lower(*name);
      if (!is_http_token(n)) {
        error(item, "upgrade protocol '" + *name + "' is not an HTTP token such as websocket");
      } else if (n == "h2c") {
        // HTTP/2 after the upgrade would carry requests nobody inspects.
        error(item, "upgrade protocol 'h2c' cannot be allowed: HTTP/2 after the 101 would not be inspected");
      } else {
        http.upgrade_protocols.push_back(n);
      }
    }
  }
}

void Loader::load_listener(const Field& f, Listener& l) {
  Fields fields(*this, f, "listener", schema::kListener);
  if (!f.value.IsMap()) return;
  if (const Field* n = fields.require("name", "listener")) {
    if (auto name = nonempty_string(*n)) {
      if (is_plain_name(*name)) {
        l.name = *name;
      } else {
        error(*n, "listener name '" + *name + "' may only use letters, digits, '-', '_' and '.'");
      }
    }
  }
  if (const Field* a = fields.require("listen", "listener")) {
    if (auto ep = endpoint(*a)) l.listen = *ep;
  }
  const Field* transparent = fields.get("transparent");
  const Field* forward = fields.get("forward");
  bool transparent_valid = true;
  if (transparent != nullptr) {
    const auto b = boolean(*transparent);
    transparent_valid = b.has_value();
    l.transparent = b.value_or(false);
  }
  if (forward != nullptr) {
    if (auto ep = endpoint(*forward)) l.forward = *ep;
  }
  if (l.transparent && forward != nullptr) {
    error(*forward,
          "listener '" + l.name + "' has both transparent: true and forward; a listener is one or the other");
  } else if (!l.transparent && forward == nullptr && transparent_valid) {
    error(f, "listener '" + l.name + "' needs transparent: true or forward: IP:PORT");
  }
}

void Loader::load_steering(const Field& f, Steering& steering) {
  Fields fields(*this, f, "steering", schema::kSteering);
  if (const Field* p = fields.get("intercept_ports")) {
    if (p->value.IsScalar() && p->value.Scalar() == "all") {
      steering.all_ports = true;
    } else if (p->value.IsSequence()) {
      steering.all_ports = false;
      steering.ports = port_list(*p);
    } else {
      error(*p, "'intercept_ports' must be 'all' or a list of ports");
    }
  }
  if (const Field* o = fields.get("on_proxy_down")) {
    if (auto v = choice<OnProxyDown>(
            *o, {{"fail_closed", OnProxyDown::fail_closed}, {"fail_open", OnProxyDown::fail_open}})) {
      steering.on_proxy_down = *v;
    }
  }
  if (const Field* a = fields.get("attach")) {
    if (auto v = choice<SteeringAttach>(*a, {{"auto", SteeringAttach::auto_detect},
                                             {"tcx", SteeringAttach::tcx},
                                             {"tc", SteeringAttach::tc}})) {
      steering.attach = *v;
    }
  }
}

void Loader::load_admin(const Field& f, Admin& admin) {
  Fields fields(*this, f, "admin", schema::kAdmin);
  const Field* listen = fields.get("listen");
  if (listen != nullptr) {
    if (auto ep = endpoint(*listen)) admin.listen = *ep;
  }
  if (const Field* r = fields.get("allow_remote")) {
    if (auto b = boolean(*r)) admin.allow_remote = *b;
  }
  if (const Field* c = fields.get("control_socket")) {
    if (auto s = nonempty_string(*c)) {
      // sun_path holds 108 bytes with its terminating NUL; a relative path
      // would name a different socket for each working directory.
      if (s->front() != '/')
        error(*c, "admin.control_socket '" + *s + "' must be an absolute path");
      else if (s->size() > 107)
        error(*c, "admin.control_socket is " + std::to_string(s->size()) +
                      " bytes long; a Unix socket path holds at most 107");
      else
        admin.control_socket = *s;
    }
  }
  // The admin API shows every connection and the whole policy: exposing it
  // beyond the node must be a deliberate choice.
  if (listen != nullptr && !admin.listen.address().is_loopback() && !admin.allow_remote) {
    error(*listen, "admin.listen " + to_string(admin.listen) +
                       " is not a loopback address; set admin.allow_remote: true to expose the "
                       "admin API beyond this node");
  }
}

void Loader::load_log(const Field& f, Log& log) {
  Fields fields(*this, f, "log", schema::kLog);
  if (const Field* l = fields.get("level")) {
    if (auto v = choice<std::string_view>(*l, {{"trace", "trace"},
                                               {"debug", "debug"},
                                               {"info", "info"},
                                               {"warn", "warn"},
                                               {"error", "error"},
                                               {"off", "off"}})) {
      log.level = std::string(*v);
    }
  }
  if (const Field* a = fields.get("access")) {
    if (auto s = nonempty_string(*a)) log.access = *s;
  }
}

void Loader::load_pod(const Field& f, Pod& pod) {
  Fields fields(*this, f, "pod", schema::kPod);
  if (!f.value.IsMap()) return;
  if (const Field* n = fields.require("name", "pod")) {
    if (auto name = nonempty_string(*n)) {
      if (is_plain_name(*name)) {
        pod.name = *name;
      } else {
        error(*n, "pod name '" + *name + "' may only use letters, digits, '-', '_' and '.'");
      }
    }
  }
  if (const Field* i = fields.require("ip", "pod")) {
    // One address, or a dual-stack pod's list of one per family (as a
    // Kubernetes pod's podIPs).
    std::vector<Field> list;
    if (i->value.IsSequence()) {
      list = items(*i);
      if (list.empty() || list.size() > 2) error(*i, "pod ip list must hold one or two addresses");
    } else {
      list.push_back(*i);
    }
    std::vector<IpAddress> ips;
    for (const Field& item : list) {
      auto text = string(item);
      if (!text) continue;
      auto ip = parse_ip(*text);
      if (!ip) {
        error(item, "pod ip '" + *text + "' is not an IPv4 or IPv6 address");
        continue;
      }
      if (!ips.empty() && ips.front().is_v4() == ip->is_v4()) {
        error(item, "pod ip list has two IPv" + std::string(ip->is_v4() ? "4" : "6") +
                        " addresses: a pod has at most one per family");
        continue;
      }
      ips.push_back(*ip);
    }
    if (!ips.empty()) {
      pod.ip = ips.front();
      pod.extra_ips.assign(ips.begin() + 1, ips.end());
    }
  }
  if (const Field* l = fields.get("labels")) {
    if (!l->value.IsNull()) pod.labels = string_map(*l, false);
  }
  if (const Field* d = fields.get("dev")) {
    if (auto dev = nonempty_string(*d)) {
      // Linux interface names: at most IFNAMSIZ-1 bytes, no '/', ':' or spaces.
      const bool valid = dev->size() <= 15 && dev->find_first_of("/: \t") == std::string::npos;
      if (valid) {
        pod.dev = *dev;
      } else {
        error(*d, "dev '" + *dev +
                      "' is not a valid interface name (at most 15 characters, no '/', ':' or spaces)");
      }
    }
  }
}

void Loader::load_policy(const Field& f, PolicySpec& policy) {
  Fields fields(*this, f, "policy", schema::kPolicy);
  if (const Field* d = fields.get("default")) {
    if (auto v =
            choice<DefaultAction>(*d, {{"deny", DefaultAction::deny}, {"allow", DefaultAction::allow}})) {
      policy.default_action = *v;
    }
  }
  if (const Field* r = fields.get("rules")) {
    std::map<std::string, int> names;
    for (const Field& item : items(*r)) {
      Rule rule;
      load_rule(item, rule);
      if (rule.name.empty()) continue;
      if (const auto [it, fresh] = names.emplace(rule.name, rule.line); !fresh) {
        error(item, "duplicate rule name '" + rule.name + "' (first defined at line " +
                        std::to_string(it->second) + ")");
        continue;
      }
      policy.rules.push_back(std::move(rule));
    }
  }
}

void Loader::load_rule(const Field& f, Rule& rule) {
  Fields fields(*this, f, "rule", schema::kRule);
  if (!f.value.IsMap()) return;
  rule.line = f.mark().line + 1;
  if (const Field* n = fields.require("name", "rule")) {
    if (auto name = nonempty_string(*n)) {
      if (is_plain_name(*name)) {
        rule.name = *name;
      } else {
        error(*n, "rule name '" + *name + "' may only use letters, digits, '-', '_' and '.'");
      }
    }
  }
  if (const Field* s = fields.require("from", "rule")) load_selector(*s, rule.from, false);
  if (const Field* s = fields.require("to", "rule")) load_selector(*s, rule.to, true);
  if (const Field* a = fields.require("action", "rule")) {
    if (auto v = choice<Action>(*a, {{"allow", Action::allow}, {"deny", Action::deny}})) {
      rule.action = *v;
    }
  }
  const Field* http = fields.get("http");
  const Field* grpc = fields.get("grpc");
  const Field* tls = fields.get("tls");
  if ((http != nullptr || grpc != nullptr) && tls != nullptr) {
    error(tls->key_mark, "rule '" + rule.name + "' has both " + (http != nullptr ? "http" : "grpc") +
                             " and tls; a connection is either plain HTTP or TLS, so write two rules");
    return;
  }
  if (http != nullptr) {
    const auto entries = items(*http);
    if (entries.empty() && (http->value.IsNull() || http->value.IsSequence())) {
      error(*http, "'http' needs at least one entry; drop it to make the rule L4");
    }
    for (const Field& entry : entries) {
      HttpMatch m;
      load_http(entry, m);
      rule.http.push_back(std::move(m));
    }
  }
  if (grpc != nullptr) {
    // Shorthand for http entries: one matcher underneath (load_grpc).
    const auto entries = items(*grpc);
    if (entries.empty() && (grpc->value.IsNull() || grpc->value.IsSequence())) {
      error(*grpc, "'grpc' needs at least one 'package.Service/Method' or 'package.Service/*'");
    }
    for (const Field& entry : entries) {
      HttpMatch m;
      load_grpc(entry, m);
      if (m.grpc) rule.http.push_back(std::move(m));
    }
  }
  if (tls != nullptr) {
    TlsMatch m;
    load_tls(*tls, m);
    rule.tls = std::move(m);
  }
}

void Loader::load_selector(const Field& f, Selector& s, bool is_to) {
  const std::string side = is_to ? "to" : "from";
  // `ports` is accepted on `from` here only to explain why it is wrong.
  Fields fields(*this, f, "'" + side + "'", schema::kSelector);
  if (!f.value.IsMap()) {
    if (f.value.IsNull()) error(f, "'" + side + "' needs one of pod, labels or cidr");
    return;
  }
  std::vector<std::string> given;
  if (const Field* p = fields.get("pod")) {
    given.push_back("pod");
    if (auto name = nonempty_string(*p)) {
      s.pod = *name;
      pod_references_.push_back(*p);
    }
  }
  if (const Field* l = fields.get("labels")) {
    given.push_back("labels");
    s.labels = string_map(*l, false);
    if (l->value.IsMap() && s.labels.empty()) {
      error(*l, "'labels' must not be empty; use cidr to select by address");
    }
  }
  if (const Field* c = fields.get("cidr")) {
    given.push_back("cidr");
    if (auto text = string(*c)) {
      if (auto cidr = parse_cidr(*text)) {
        s.cidr = *cidr;
      } else {
        error(*c, cidr_problem(*text));
      }
    }
  }
  if (given.empty()) {
    error(f, "'" + side + "' needs one of pod, labels or cidr");
  } else if (given.size() > 1) {
    error(f, "'" + side + "' takes exactly one of pod, labels or cidr, got " + join(given, " and "));
  }
  if (const Field* p = fields.get("ports")) {
    if (!is_to) {
      error(p->key_mark, "'ports' is only allowed on 'to': a client's source port is ephemeral");
    } else {
      s.ports = port_list(*p);
    }
  }
}

void Loader::load_http(const Field& f, HttpMatch& m) {
  Fields fields(*this, f, "http entry", schema::kHttpMatch);
  if (!f.value.IsMap()) return;
  if (f.value.size() == 0) {
    error(f, "empty http entry would match every request; drop 'http' to make the rule L4");
    return;
  }
  if (const Field* v = fields.get("method")) {
    if (auto method = nonempty_string(*v)) {
      if (!is_http_token(*method)) {
        error(*v, "method '" + *method + "' is not a valid HTTP method");
      } else if (std::any_of(method->begin(), method->end(), [](char c) { return c >= 'a' && c <= 'z'; })) {
        // Methods are case-sensitive on the wire; `get` would never match.
        error(*v, "method '" + *method + "' must be upper-case (methods are case-sensitive)");
      } else {
        m.method = *method;
      }
    }
  }
  for (const char* key : {"path", "path_exact"}) {
    if (const Field* v = fields.get(key)) {
      if (auto path = nonempty_string(*v)) {
        if (path->front() != '/') {
          error(*v, "'" + std::string(key) + "' must start with '/'");
        } else if (path->find('?') != std::string::npos) {
          error(*v, "'" + std::string(key) + "' is matched without the query string; remove '?...'");
        } else {
          (std::string_view(key) == "path" ? m.path : m.path_exact) = *path;
        }
      }
    }
  }
  if (const Field* v = fields.get("path_regex")) {
    if (auto pattern = nonempty_string(*v)) {
      RE2::Options options;
      options.set_log_errors(false);
      const RE2 re(*pattern, options);
      if (!re.ok()) {
        error(*v, "invalid path_regex '" + *pattern + "': " + re.error());
      } else {
        m.path_regex = *pattern;
      }
    }
  }
  if (const Field* v = fields.get("host")) {
    if (auto host = nonempty_string(*v)) {
      // Stored lower-case without a port: matching ignores both (SPEC.md).
      std::string h = lower(*host);
      if (h.front() == '[') {
        const auto close = h.find(']');
        if (close != std::string::npos) h = h.substr(0, close + 1);
      } else if (const auto colon = h.find(':');
                 colon != std::string::npos && h.find(':', colon + 1) == std::string::npos) {
        h = h.substr(0, colon);
      }
      if (h.empty()) {
        error(*v, "'host' has no host name");
      } else {
        m.host = h;
      }
    }
  }
  if (const Field* v = fields.get("headers")) {
    m.headers = string_map(*v, true);
    for (const auto& [name, value] : m.headers) {
      if (!is_http_token(name)) error(*v, "header name '" + name + "' is not a valid HTTP token");
    }
  }
}

// A gRPC method is `POST /package.Service/Method` (gRPC over HTTP/2,
// "Path"): `package.Service/Method` becomes method POST and path_exact
// /package.Service/Method; `package.Service/*` becomes method POST and path
// prefix /package.Service/ (every method of the service). Names are
// protobuf identifiers, so nothing in them needs escaping or canonicalising.
void Loader::load_grpc(const Field& f, HttpMatch& m) {
  const auto text = nonempty_string(f);
  if (!text) return;
  const auto identifier = [](std::string_view s) {
    return !s.empty() && !(s[0] >= '0' && s[0] <= '9') && std::all_of(s.begin(), s.end(), [](char c) {
      return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    });
  };
  const auto slash = text->find('/');
  bool ok = slash != std::string::npos && slash + 1 < text->size();
  if (ok) {
    const std::string_view service = std::string_view(*text).substr(0, slash);
    const std::string_view method = std::string_view(*text).substr(slash + 1);
    for (std::size_t start = 0; ok && start <= service.size();) {
      const auto dot = std::min(service.find('.', start), service.size());
      ok = identifier(service.substr(start, dot - start));
      start = dot + 1;
    }
    ok = ok && (method == "*" || identifier(method));
  }
  if (!ok) {
    error(f,
          "grpc entry '" + *text +
              "' must be 'package.Service/Method' or 'package.Service/*' (protobuf names, no leading '/')");
    return;
  }
  m.method = "POST";
  if (text->ends_with("/*")) {
    m.path = "/" + text->substr(0, text->size() - 1);
  } else {
    m.path_exact = "/" + *text;
  }
  m.grpc = *text;
}

void Loader::load_tls(const Field& f, TlsMatch& m) {
  Fields fields(*this, f, "tls", schema::kTls);
  if (!f.value.IsMap()) {
    if (f.value.IsNull()) error(f, "'tls' needs 'sni: [names]'");
    return;
  }
  const Field* s = fields.require("sni", "tls");
  if (s == nullptr) return;
  const auto names = items(*s);
  if (names.empty() && (s->value.IsNull() || s->value.IsSequence())) {
    error(*s, "'sni' needs at least one name");
  }
  for (const Field& item : names) {
    auto name = nonempty_string(item);
    if (!name) continue;
    std::string n = lower(*name);
    if (n.back() == '.') n.pop_back();  // a fully-qualified trailing dot names the same host
    const std::string_view rest = n.rfind("*.", 0) == 0 ? std::string_view(n).substr(2) : n;
    const bool valid = !rest.empty() && rest.find('*') == std::string_view::npos && rest.front() != '.' &&
                       rest.back() != '.' && rest.find("..") == std::string_view::npos &&
                       rest.find_first_of(" \t/:") == std::string_view::npos;
    if (!valid) {
      error(item, "sni '" + *name + "' is not a host name or a '*.domain' wildcard");
      continue;
    }
    m.sni.push_back(std::move(n));
  }
}

}  // namespace

LoadResult parse_config(std::string_view yaml_text, const std::string& source_name) {
  Loader loader(source_name);
  LoadResult result;
  Node root;
  try {
    root = YAML::Load(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    std::string message = "YAML syntax error: " + e.msg;
    // yaml-cpp reports a tab in indentation as "illegal map value" or the
    // like, nowhere near the cause: name it when the text has one.
    if (yaml_text.find('\t') != std::string_view::npos) {
      const std::size_t line_of_tab = static_cast<std::size_t>(
          std::count(yaml_text.begin(), yaml_text.begin() + yaml_text.find('\t'), '\n') + 1);
      message += " (line " + std::to_string(line_of_tab) + " has a tab: YAML indentation must be spaces)";
    }
    loader.error(e.mark, std::move(message));
    result.diagnostics = loader.take_diagnostics();
    return result;
  }
  Config config;
  try {
    config = loader.load(root);
  } catch (const YAML::Exception& e) {
    // yaml-cpp throws on misuse of a node; each access above checks types
    // first, so this is a last line of defence that still names a place.
    loader.error(e.mark, std::string("cannot read config: ") + e.msg);
  } catch (const std::exception& e) {
    loader.error(YAML::Mark::null_mark(), std::string("cannot read config: ") + e.what());
  }
  result.diagnostics = loader.take_diagnostics();
  if (result.diagnostics.empty()) {
    config.source = source_name;
    result.config = std::make_shared<const Config>(std::move(config));
  }
  return result;
}

}  // namespace shunt::config
