// Left-aligned text columns, for the tables `check`, `status` and `conns`
// print. One implementation so every command's tables line up alike.
#pragma once

#include <ostream>
#include <string>
#include <string_view>
#include <vector>

namespace shunt::cli {

// Each column as wide as its widest cell plus two spaces; every line starts
// with `indent` and carries no trailing spaces.
void print_table(const std::vector<std::vector<std::string>>& rows, std::ostream& out,
                 std::string_view indent = "");

}  // namespace shunt::cli
