// What `tandem launch` reads from Slurm when its flags are absent.
//
// The node-list parser is header-only so the tests (which do not link
// tools/*.cpp) can compile it inline; reading the environment lives in
// slurm.cpp.
//
// Node lists: Slurm writes a job's hosts compressed, e.g.
//   "gpu[01-03,07],login2,rack[1-2]-n[1-2]"
// which expands to gpu01 gpu02 gpu03 gpu07 login2 rack1-n1 rack1-n2
// rack2-n1 rack2-n2. What the parser handles: comma-separated items; in
// each item any number of bracket groups (the expansion is their cartesian
// product, left to right); inside a bracket comma-separated numbers and
// ranges lo-hi, zero-padded to the width of lo ("[08-10]" -> 08 09 10).
// What it does not: nested brackets, range steps (":2"), and lists longer
// than kMaxSlurmHosts; each of these is a UserError naming the list, as is
// any other malformed input, never a silently wrong host.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/core/error.h"

namespace tandem::tools {

inline constexpr size_t kMaxSlurmHosts = 1 << 16;

namespace slurm_detail {

[[noreturn]] inline void bad_nodelist(std::string_view list, std::string_view why) {
  throw UserError(fmt::format("cannot parse the Slurm node list '{}': {}", list, why));
}

inline bool all_digits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

// "01-03,7" -> {"01","02","03","7"}
inline std::vector<std::string> expand_bracket(std::string_view inner, std::string_view list) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= inner.size()) {
    size_t comma = inner.find(',', start);
    if (comma == std::string_view::npos) comma = inner.size();
    std::string_view part = inner.substr(start, comma - start);
    size_t dash = part.find('-');
    std::string_view lo = part.substr(0, dash);
    std::string_view hi = dash == std::string_view::npos ? lo : part.substr(dash + 1);
    if (!all_digits(lo) || !all_digits(hi) || lo.size() > 9 || hi.size() > 9)
      bad_nodelist(list, fmt::format("'[{}]' holds '{}', not a number or a range lo-hi", inner, part));
    uint64_t a = std::stoull(std::string(lo)), b = std::stoull(std::string(hi));
    if (a > b) bad_nodelist(list, fmt::format("the range '{}' runs backwards", part));
    if (b - a >= kMaxSlurmHosts) bad_nodelist(list, fmt::format("more than {} hosts", kMaxSlurmHosts));
    for (uint64_t i = a; i <= b; i++) out.push_back(fmt::format("{:0{}}", i, lo.size()));
    start = comma + 1;
  }
  return out;
}

inline std::vector<std::string> expand_item(std::string_view item, std::string_view list) {
  size_t open = item.find('[');
  size_t stray = item.find(']');
  if (open == std::string_view::npos) {
    if (stray != std::string_view::npos) bad_nodelist(list, "a ']' without its '['");
    return {std::string(item)};
  }
  if (stray < open) bad_nodelist(list, "a ']' without its '['");
  size_t close = item.find(']', open);
  if (close == std::string_view::npos) bad_nodelist(list, "a '[' without its ']'");
  std::string_view inner = item.substr(open + 1, close - open - 1);
  if (inner.find('[') != std::string_view::npos) bad_nodelist(list, "nested brackets");
  std::vector<std::string> heads = expand_bracket(inner, list);
  std::vector<std::string> tails = expand_item(item.substr(close + 1), list);
  if (heads.size() * tails.size() > kMaxSlurmHosts)
    bad_nodelist(list, fmt::format("more than {} hosts", kMaxSlurmHosts));
  std::vector<std::string> out;
  std::string_view prefix = item.substr(0, open);
  for (const auto& h : heads)
    for (const auto& t : tails) out.push_back(fmt::format("{}{}{}", prefix, h, t));
  return out;
}

}  // namespace slurm_detail

// Expands a Slurm node list ("gpu[01-03,07],login2") into host names, in order.
inline std::vector<std::string> expand_slurm_nodelist(std::string_view list) {
  using slurm_detail::bad_nodelist;
  std::vector<std::string> hosts;
  size_t start = 0;
  int depth = 0;
  for (size_t i = 0; i <= list.size(); i++) {
    char c = i < list.size() ? list[i] : ',';
    if (c == '[') depth++;
    if (c == ']') depth--;
    if (depth < 0) bad_nodelist(list, "a ']' without its '['");
    if (c == ' ' || c == '\t' || c == '\n') bad_nodelist(list, "white space in a host name");
    if (c != ',' || depth > 0) continue;
    std::string_view item = list.substr(start, i - start);
    if (item.empty()) bad_nodelist(list, "an empty host name");
    for (auto& h : slurm_detail::expand_item(item, list)) {
      if (h.empty()) bad_nodelist(list, "an empty host name");
      hosts.push_back(std::move(h));
      if (hosts.size() > kMaxSlurmHosts) bad_nodelist(list, fmt::format("more than {} hosts", kMaxSlurmHosts));
    }
    start = i + 1;
  }
  if (depth != 0) bad_nodelist(list, "a '[' without its ']'");
  return hosts;
}

// The first host of a node list: where node 0's launcher, and so the store, runs.
inline std::string first_slurm_host(std::string_view list) { return expand_slurm_nodelist(list).at(0); }

// A Slurm count such as SLURM_NNODES=4 or SLURM_NTASKS_PER_NODE=8; also the
// compressed "8(x4)" form Slurm uses for per-node counts (-> 8). `name` is
// the variable, for the message.
inline int parse_slurm_count(std::string_view name, std::string_view text) {
  std::string_view digits = text.substr(0, text.find('('));
  if (!slurm_detail::all_digits(digits) || digits.size() > 9)
    throw UserError(fmt::format("{}='{}' is not a count Slurm writes (expected a number like 4 or 4(x2))", name, text));
  return std::stoi(std::string(digits));
}

// The launch settings Slurm provides; each is empty when its variable is unset.
struct SlurmJob {
  std::optional<int> nnodes;          // SLURM_NNODES (or SLURM_JOB_NUM_NODES)
  std::optional<int> node_rank;       // SLURM_NODEID
  std::optional<int> nproc_per_node;  // SLURM_NTASKS_PER_NODE, else SLURM_GPUS_ON_NODE
  std::optional<std::string> nodelist;  // SLURM_JOB_NODELIST (or SLURM_NODELIST), compressed; its
                                        // first host serves the store (first_slurm_host)
};

// Reads SLURM_* from the environment; all empty outside a Slurm job.
// Throws UserError when a count is set but malformed (the node list is
// parsed only when it is needed, by first_slurm_host).
SlurmJob read_slurm_env();

}  // namespace tandem::tools
