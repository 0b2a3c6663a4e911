// `shunt bench [args]`: runs the side-by-side benchmark, bench/run in the
// source tree this binary was built from. Every argument after `bench` is
// passed through untouched (bench/run --help lists them), and SHUNT_BIN is
// set to this binary so the benchmark measures exactly what was invoked.
#include "cli/cli.h"

#include <CLI/CLI.hpp>

#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

namespace shunt::cli {

void add_bench_command(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand(
      "bench", "Side-by-side benchmark: direct, shunt copy/splice/sockmap, HAProxy, nginx (runs bench/run)");
  // bench/run owns its options, --help included: stop parsing at the first
  // argument and hand the rest over.
  cmd->prefix_command();
  cmd->set_help_flag();
  cmd->callback([cmd, &exit_code] {
    const std::string script = std::string(SHUNT_SOURCE_DIR) + "/bench/run";
    std::vector<std::string> args = cmd->remaining();

    std::vector<char> self(4096);
    const ssize_t n = readlink("/proc/self/exe", self.data(), self.size() - 1);
    if (n > 0) {
      self[static_cast<size_t>(n)] = '\0';
      setenv("SHUNT_BIN", self.data(), 1);
    }

    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(script.c_str()));
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(script.c_str(), argv.data());
    // Only reached when exec failed: the source tree moved or is incomplete.
    std::cerr << "shunt bench: cannot run " << script << ": " << std::strerror(errno) << "\n";
    exit_code = 2;
  });
}

}  // namespace shunt::cli
