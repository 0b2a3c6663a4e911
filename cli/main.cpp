#include "cli/cli.h"

#include <CLI/CLI.hpp>

#include <csignal>

int main(int argc, char** argv) {
  // A peer that resets while we write must surface as EPIPE, not kill the node proxy.
  std::signal(SIGPIPE, SIG_IGN);

  CLI::App app{"shunt: node-level L7 transparent proxy (BPF sockmap data path)"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every command");

  int exit_code = 0;
  shunt::cli::add_run_command(app, exit_code);
  shunt::cli::add_check_commands(app, exit_code);
  shunt::cli::add_pod_commands(app, exit_code);
  shunt::cli::add_admin_commands(app, exit_code);
  shunt::cli::add_bench_command(app, exit_code);
  shunt::cli::add_version_command(app, exit_code);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 prints usage errors; SPEC.md wants bad arguments to exit 1.
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 1;
  }
  return exit_code;
}
