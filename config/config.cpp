// Small value types of the config: names of enums, addresses, CIDRs,
// durations and endpoints. The YAML walk lives in loader.cpp.
#include "config/config.h"

#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

namespace shunt::config {

std::string_view to_string(Datapath d) {
  switch (d) {
    case Datapath::sockmap:
      return "sockmap";
    case Datapath::splice:
      return "splice";
    case Datapath::copy:
      return "copy";
  }
  return "?";
}

std::string_view to_string(UpstreamSource s) {
  switch (s) {
    case UpstreamSource::client:
      return "client";
    case UpstreamSource::node:
      return "node";
  }
  return "?";
}

std::string_view to_string(OnProxyDown o) {
  switch (o) {
    case OnProxyDown::fail_closed:
      return "fail_closed";
    case OnProxyDown::fail_open:
      return "fail_open";
  }
  return "?";
}

std::string_view to_string(SteeringAttach a) {
  switch (a) {
    case SteeringAttach::auto_detect:
      return "auto";
    case SteeringAttach::tcx:
      return "tcx";
    case SteeringAttach::tc:
      return "tc";
  }
  return "?";
}

std::string_view to_string(Action a) {
  switch (a) {
    case Action::allow:
      return "allow";
    case Action::deny:
      return "deny";
  }
  return "?";
}

std::string_view to_string(DefaultAction a) {
  switch (a) {
    case DefaultAction::allow:
      return "allow";
    case DefaultAction::deny:
      return "deny";
  }
  return "?";
}

std::string_view to_string(EncodedSlash e) {
  switch (e) {
    case EncodedSlash::reject:
      return "reject";
    case EncodedSlash::keep:
      return "keep";
    case EncodedSlash::decode:
      return "decode";
  }
  return "?";
}

std::string_view to_string(InvalidEscape e) { return e == InvalidEscape::keep ? "keep" : "reject"; }

std::string_view to_string(UnexpectedBody e) { return e == UnexpectedBody::forward ? "forward" : "reject"; }

std::string Diagnostic::to_string() const {
  std::string out = file;
  if (line > 0) {
    out += ':' + std::to_string(line) + ':' + std::to_string(column > 0 ? column : 1);
  }
  out += ": ";
  out += message;
  return out;
}

namespace {

// An IPv4 client of a dual-stack socket shows up as ::ffff:a.b.c.d; it is the
// same host as a.b.c.d, and every rule written with IPv4 must see it so.
IpAddress unmap(const IpAddress& addr) {
  if (addr.is_v6() && addr.to_v6().is_v4_mapped()) {
    return boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, addr.to_v6());
  }
  return addr;
}

}  // namespace

IpAddress masked(const IpAddress& addr, unsigned prefix) {
  if (addr.is_v4()) {
    const std::uint32_t bits = addr.to_v4().to_uint();
    const std::uint32_t mask = prefix == 0 ? 0 : ~std::uint32_t{0} << (32 - prefix);
    return boost::asio::ip::address_v4(bits & mask);
  }
  auto bytes = addr.to_v6().to_bytes();
  for (unsigned i = 0; i < bytes.size(); ++i) {
    const unsigned bit = i * 8;
    if (bit >= prefix) {
      bytes[i] = 0;
    } else if (prefix - bit < 8) {
      bytes[i] &= static_cast<unsigned char>(0xff << (8 - (prefix - bit)));
    }
  }
  return boost::asio::ip::address_v6(bytes);
}

bool Cidr::contains(const IpAddress& raw) const {
  const IpAddress addr = unmap(raw);
  // parse_cidr() never yields a mapped network, but a hand-built Cidr may.
  const bool mapped_net = network.is_v6() && network.to_v6().is_v4_mapped();
  const IpAddress net = mapped_net ? unmap(network) : network;
  const unsigned bits = mapped_net ? (prefix >= 96 ? prefix - 96 : 0) : prefix;
  if (addr.is_v4() != net.is_v4()) return false;
  return masked(addr, bits) == net;
}

std::string Cidr::to_string() const { return network.to_string() + '/' + std::to_string(prefix); }

std::optional<IpAddress> parse_ip(std::string_view text) {
  if (text.empty()) return std::nullopt;
  boost::system::error_code ec;
  const IpAddress addr = boost::asio::ip::make_address(std::string(text), ec);
  if (ec) return std::nullopt;
  return addr;
}

std::optional<Cidr> parse_cidr(std::string_view text) {
  const auto slash = text.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  const auto addr = parse_ip(text.substr(0, slash));
  if (!addr) return std::nullopt;
  const std::string_view bits = text.substr(slash + 1);
  unsigned prefix = 0;
  const auto [end, ec] = std::from_chars(bits.data(), bits.data() + bits.size(), prefix);
  if (ec != std::errc{} || end != bits.data() + bits.size() || bits.empty()) return std::nullopt;
  if (prefix > (addr->is_v4() ? 32u : 128u)) return std::nullopt;
  if (masked(*addr, prefix) != *addr) return std::nullopt;
  // ::ffff:10.0.0.0/104 is 10.0.0.0/8 in the form IPv4 peers take on a
  // dual-stack socket; store it as IPv4 so it matches like one. (Host bits
  // being clear implies prefix >= 96 for any mapped network.)
  if (addr->is_v6() && addr->to_v6().is_v4_mapped()) return Cidr{unmap(*addr), prefix - 96};
  return Cidr{*addr, prefix};
}

std::optional<Millis> parse_duration(std::string_view text) {
  std::uint64_t count = 0;
  const char* const begin = text.data();
  const char* const end = text.data() + text.size();
  const auto [unit_begin, ec] = std::from_chars(begin, end, count);
  if (ec != std::errc{} || unit_begin == begin) return std::nullopt;
  const std::string_view unit(unit_begin, static_cast<std::size_t>(end - unit_begin));
  std::uint64_t scale = 0;
  if (unit == "ms") {
    scale = 1;
  } else if (unit == "s") {
    scale = 1'000;
  } else if (unit == "m") {
    scale = 60'000;
  } else if (unit == "h") {
    scale = 3'600'000;
  } else {
    return std::nullopt;
  }
  // A year of milliseconds fits easily; anything that overflows is a typo.
  constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<Millis::rep>::max());
  if (count > kMax / scale) return std::nullopt;
  return Millis{static_cast<Millis::rep>(count * scale)};
}

std::optional<Endpoint> parse_endpoint(std::string_view text) {
  std::string_view host;
  std::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    // IPv6 needs brackets: the last colon would otherwise be ambiguous.
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return std::nullopt;
    }
    host = text.substr(1, close - 1);
    port_text = text.substr(close + 2);
    const auto addr = parse_ip(host);
    if (!addr || !addr->is_v6()) return std::nullopt;
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    const auto addr = parse_ip(host);
    if (!addr || !addr->is_v4()) return std::nullopt;
  }
  unsigned port = 0;
  const auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc{} || end != port_text.data() + port_text.size() || port_text.empty() || port == 0 ||
      port > 65535) {
    return std::nullopt;
  }
  return Endpoint{*parse_ip(host), static_cast<std::uint16_t>(port)};
}

std::string to_string(const Endpoint& ep) {
  const IpAddress addr = ep.address();
  if (addr.is_v6()) return '[' + addr.to_string() + "]:" + std::to_string(ep.port());
  return addr.to_string() + ':' + std::to_string(ep.port());
}

LoadResult load_config_file(const std::string& path) {
  // A directory opens and reads as empty: say what it is instead of "the
  // config is empty".
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    LoadResult result;
    result.diagnostics.push_back({path, 0, 0,
                                  "is a directory; give the config file in it, e.g. " +
                                      (std::filesystem::path(path) / "shunt.yaml").string()});
    return result;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    LoadResult result;
    result.diagnostics.push_back(
        {path, 0, 0, std::string("cannot read config file: ") + std::strerror(errno)});
    return result;
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    LoadResult result;
    result.diagnostics.push_back({path, 0, 0, "error while reading config file"});
    return result;
  }
  return parse_config(text.str(), path);
}

}  // namespace shunt::config
