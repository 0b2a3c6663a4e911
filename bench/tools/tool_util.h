// What the load tools in bench/tools share. Header-only, libc only: each
// tool still builds from its one source file (bench/harness.py compiles one
// when no build has it).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

// Set by each tool's main file: the name its error lines start with.
extern const char* const kToolName;

[[noreturn]] inline void die(const std::string& what) {
  std::fprintf(stderr, "%s: %s: %s\n", kToolName, what.c_str(), std::strerror(errno));
  std::exit(2);
}

// IPv4 ADDR:PORT; false when it is not one.
inline bool parse_endpoint(const std::string& s, sockaddr_in& out) {
  const auto colon = s.rfind(':');
  if (colon == std::string::npos) return false;
  out = sockaddr_in{};
  out.sin_family = AF_INET;
  out.sin_port = htons(static_cast<uint16_t>(std::atoi(s.c_str() + colon + 1)));
  return inet_pton(AF_INET, s.substr(0, colon).c_str(), &out.sin_addr) == 1;
}
