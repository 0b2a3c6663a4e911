#include "bpf/libbpf_log.h"
#include "cli/cli.h"

#include <CLI/CLI.hpp>

#include <csignal>
#include <iostream>
#include <string>
#include <string_view>

namespace {

// The first argument names no command: say which commands exist, once,
// instead of CLI11's "A subcommand is required" (issue 11).
bool unknown_command(CLI::App& app, std::string_view arg) {
  if (arg.empty() || arg.front() == '-') return false;
  // Option groups are nameless subcommands in CLI11: skip them.
  const auto commands = app.get_subcommands([](const CLI::App* sub) { return !sub->get_name().empty(); });
  for (const CLI::App* sub : commands) {
    if (sub->check_name(std::string(arg))) return false;
  }
  std::string names;
  for (const CLI::App* sub : commands) names += (names.empty() ? "" : ", ") + sub->get_name();
  std::cerr << "shunt: unknown command '" << arg << "' (commands: " << names
            << "); `shunt --help` describes them\n";
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  // A peer that resets while we write must surface as EPIPE, not kill the node proxy.
  std::signal(SIGPIPE, SIG_IGN);
  shunt::bpf::route_libbpf_log();

  CLI::App app{"shunt: node-level L7 transparent proxy (BPF sockmap data path)"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every command");
  app.set_version_flag("--version", std::string("shunt ") + SHUNT_VERSION);

  int exit_code = 0;
  shunt::cli::add_run_command(app, exit_code);
  shunt::cli::add_check_commands(app, exit_code);
  shunt::cli::add_pod_commands(app, exit_code);
  shunt::cli::add_admin_commands(app, exit_code);
  shunt::cli::add_bench_command(app, exit_code);
  shunt::cli::add_version_command(app, exit_code);
  // `shunt help` is what people type first; it prints what --help does.
  // (app.help() would describe the selected subcommand, `help` itself.)
  app.add_subcommand("help", "Show this help")->callback([&app] {
    std::cout << app.get_formatter()->make_help(&app, "shunt", CLI::AppFormatMode::Normal);
  });

  if (argc > 1 && unknown_command(app, argv[1])) return 1;
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 prints usage errors; SPEC.md wants bad arguments to exit 1.
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 1;
  }
  return exit_code;
}
