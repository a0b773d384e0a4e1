#include "runtime/trace.h"

#include <fmt/format.h>

#include <fstream>

#include "runtime/core/error.h"

namespace tandem {

TraceWriter::TraceWriter(int rank) : rank_(rank), origin_(Clock::now()) {}

void TraceWriter::complete(const std::string& name, const char* category, Track track, Clock::time_point start,
                           Clock::time_point end, nlohmann::json args) {
  auto us = [&](Clock::time_point t) { return std::chrono::duration<double, std::micro>(t - origin_).count(); };
  nlohmann::json e = {{"name", name}, {"cat", category},        {"ph", "X"},
                      {"ts", us(start)}, {"dur", us(end) - us(start)}, {"pid", rank_},
                      {"tid", static_cast<int>(track)}, {"args", std::move(args)}};
  std::lock_guard<std::mutex> lock(mutex_);
  events_.push_back(std::move(e));
}

size_t TraceWriter::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return events_.size();
}

void TraceWriter::write(const std::string& path) const {
  nlohmann::json events = nlohmann::json::array();
  // Metadata events name the process and its two tracks in the viewer.
  events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", rank_}, {"args", {{"name", fmt::format("rank {}", rank_)}}}});
  events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", rank_}, {"tid", static_cast<int>(Track::compute)},
                    {"args", {{"name", "compute"}}}});
  events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", rank_}, {"tid", static_cast<int>(Track::comm)},
                    {"args", {{"name", "comm"}}}});
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& e : events_) events.push_back(e);
  }
  std::ofstream out(path);
  out << nlohmann::json{{"traceEvents", events}, {"displayTimeUnit", "ms"}}.dump() << "\n";
  if (!out) throw UserError(fmt::format("cannot write trace {}", path));
}

}  // namespace tandem
