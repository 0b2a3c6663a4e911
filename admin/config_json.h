// The active config as JSON for GET /config: the same shape and names as the
// YAML (durations as "30s", endpoints as "127.0.0.1:15001"), so an operator
// can compare it with the file, plus the policy generation it belongs to.
#pragma once

#include "config/config.h"

#include <cstdint>
#include <string>

namespace shunt::proxy {

std::string config_to_json(const config::Config& config, std::uint64_t generation);
// "1h", "2m", "30s" or "250ms": the largest unit that divides exactly.
std::string format_duration(config::Millis d);

}  // namespace shunt::proxy
