// docs/config.md stays the reference of what the loader accepts: every key
// of config/schema.h (the lists the loader checks mappings against) is
// named there as `path.key`, every key its tables name is one the loader
// accepts, and every `yaml` example in it loads without an error. Runs
// from the source directory (tests/CMakeLists.txt).
#include "config/config.h"
#include "config/schema.h"

#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace shunt::config {
namespace {

std::string read_doc() {
  std::ifstream in("docs/config.md");
  EXPECT_TRUE(in) << "docs/config.md not found (the test runs from the source directory)";
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// "proxy.timeouts" + "connect" -> "proxy.timeouts.connect"; top level: the key.
std::set<std::string> schema_paths() {
  std::set<std::string> out;
  for (const auto& section : schema::kSections) {
    for (const auto key : section.keys) {
      out.insert(section.path.empty() ? std::string(key)
                                      : std::string(section.path) + "." + std::string(key));
    }
  }
  return out;
}

TEST(ConfigDoc, DocumentsEveryKeyTheLoaderAccepts) {
  const std::string doc = read_doc();
  for (const auto& path : schema_paths()) {
    EXPECT_NE(doc.find("`" + path + "`"), std::string::npos)
        << "docs/config.md does not document `" << path << "`";
  }
}

TEST(ConfigDoc, DocumentsNoKeyTheLoaderRejects) {
  // The first cell of every table row names keys; each must be accepted.
  const std::set<std::string> known = schema_paths();
  const std::string doc = read_doc();
  std::istringstream lines(doc);
  const std::regex code("`([^`]+)`");
  std::size_t checked = 0;
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("| `", 0) != 0) continue;
    const std::string first = line.substr(0, line.find(" |", 1));
    for (std::sregex_iterator it(first.begin(), first.end(), code), end; it != end; ++it) {
      EXPECT_TRUE(known.count((*it)[1]))
          << "docs/config.md documents `" << (*it)[1] << "`, which the loader does not accept";
      ++checked;
    }
  }
  EXPECT_GT(checked, 0u) << "no key table found in docs/config.md";
}

TEST(ConfigDoc, EveryExampleLoads) {
  const std::string doc = read_doc();
  const std::string open = "```yaml\n";
  std::size_t examples = 0;
  for (std::size_t at = doc.find(open); at != std::string::npos; at = doc.find(open, at)) {
    at += open.size();
    const std::size_t end = doc.find("```", at);
    ASSERT_NE(end, std::string::npos) << "unterminated yaml block";
    const LoadResult r =
        parse_config(doc.substr(at, end - at), "docs/config.md example " + std::to_string(++examples));
    for (const auto& d : r.diagnostics) ADD_FAILURE() << d.to_string();
    at = end;
  }
  EXPECT_GE(examples, 2u);
}

}  // namespace
}  // namespace shunt::config
