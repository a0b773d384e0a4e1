// The JSON line a tandem command prints last (eval, train's summary, bench).
#pragma once

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

namespace tandem::testing {

// The last line of `output` that parses as a JSON object.
inline nlohmann::json last_json(const std::string& output) {
  nlohmann::json found;
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);)
    if (line.starts_with("{")) found = nlohmann::json::parse(line, nullptr, false);
  REQUIRE(found.is_object());
  return found;
}

}  // namespace tandem::testing
