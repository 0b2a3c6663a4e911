#include "cli/cli.h"
#include "daemon/control.h"

#include <CLI/CLI.hpp>

namespace shunt::cli {

void add_run_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<proxy::RunOptions>();
  auto* cmd = app.add_subcommand("run", "Run the proxy");
  cmd->add_option(
      "-c,--config", options->config_path,
      std::string("Config file (default: ") + kSystemConfig + " if present, else the built-in default)");
  cmd->add_option("--threads", options->threads, "Worker threads (default: one per core)");
  cmd->add_flag(
      "--takeover", options->takeover,
      "Take listeners over from the shunt running on this node (admin.control_socket); it drains and "
      "exits 0");
  cmd->callback([options, &exit_code] {
    options->config_path = config_path_or_system(options->config_path);
    exit_code = proxy::run_proxy(*options);
  });
}

}  // namespace shunt::cli
