// Each `shunt` sub-command registers itself from its own file. A command's
// callback stores its exit code (SPEC.md: 0 ok, 1 bad input, 2 environment)
// in `exit_code`; one clear line on stderr accompanies any non-zero code.
#pragma once

#include <filesystem>
#include <string>

namespace CLI {
class App;
}

namespace shunt::cli {

// `shunt run` and the admin commands read this when no --config is given
// and it exists.
inline constexpr const char* kSystemConfig = "/etc/shunt/shunt.yaml";

// The config a command reads: `given`, else kSystemConfig if it exists, else
// "" (the built-in default).
inline std::string config_path_or_system(const std::string& given) {
  if (given.empty() && std::filesystem::exists(kSystemConfig)) return kSystemConfig;
  return given;
}

void add_run_command(CLI::App& app, int& exit_code);      // cli/run.cpp
void add_version_command(CLI::App& app, int& exit_code);  // cli/version.cpp
void add_check_commands(CLI::App& app, int& exit_code);   // cli/check.cpp: check, explain
void add_pod_commands(CLI::App& app, int& exit_code);     // cli/pod.cpp: pod add/del/list
void add_admin_commands(CLI::App& app, int& exit_code);   // cli/admin.cpp: status, conns
void add_bench_command(CLI::App& app, int& exit_code);    // cli/bench.cpp: runs bench/run

}  // namespace shunt::cli
