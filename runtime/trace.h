// A Chrome/Perfetto trace (the JSON "Trace Event Format"): complete events
// ("ph": "X") on named tracks, written once at the end of a run. Open the
// file in ui.perfetto.dev or chrome://tracing.
//
// Tracks: "compute" holds forward and backward per module (cat "forward" /
// "backward"); "comm" holds each gradient bucket's all-reduce (cat "comm",
// args bucket and bytes), timed on the communicator's own thread, so the
// overlap of communication with backward is visible. On a GPU the module
// events synchronize the compute stream to be exact, which costs speed:
// trace short runs.
#pragma once

#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace tandem {

class TraceWriter {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Track { compute = 1, comm = 2 };

  explicit TraceWriter(int rank);
  // Records one complete event; thread-safe.
  void complete(const std::string& name, const char* category, Track track, Clock::time_point start,
                Clock::time_point end, nlohmann::json args = nlohmann::json::object());
  // Writes {"traceEvents": [...]} to `path` (throws UserError if it cannot).
  void write(const std::string& path) const;
  size_t size() const;

 private:
  int rank_;
  Clock::time_point origin_;
  mutable std::mutex mutex_;
  std::vector<nlohmann::json> events_;
};

}  // namespace tandem
