#include "bpf/libbpf_log.h"

#include <bpf/libbpf.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <string_view>

namespace shunt::bpf {
namespace {

int to_spdlog(libbpf_print_level /*level*/, const char* format, va_list args) {
  if (!spdlog::should_log(spdlog::level::debug)) return 0;
  // libbpf's lines are short; a verifier log longer than this is cut, which
  // debug output can afford.
  char line[1024];
  const int n = std::vsnprintf(line, sizeof(line), format, args);
  if (n < 0) return 0;
  std::string_view text(line, std::min<std::size_t>(static_cast<std::size_t>(n), sizeof(line) - 1));
  while (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  spdlog::debug("{}", text);  // libbpf starts its lines with "libbpf: "
  return n;
}

}  // namespace

void route_libbpf_log() { libbpf_set_print(to_spdlog); }

}  // namespace shunt::bpf
