#include "cli/cli.h"
#include "daemon/control.h"

#include <CLI/CLI.hpp>

#include <filesystem>

namespace shunt::cli {

void add_run_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<proxy::RunOptions>();
  auto* cmd = app.add_subcommand("run", "Run the proxy");
  cmd->add_option(
      "-c,--config", options->config_path,
      std::string("Config file (default: ") + kSystemConfig + " if present, else the built-in default)");
  cmd->add_option("--threads", options->threads, "Worker threads (default: one per core)");
  cmd->callback([options, &exit_code] {
    if (options->config_path.empty() && std::filesystem::exists(kSystemConfig))
      options->config_path = kSystemConfig;
    exit_code = proxy::run_proxy(*options);
  });
}

}  // namespace shunt::cli
