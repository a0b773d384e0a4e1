// Data parallelism (DDP): every rank holds the whole model, trains on its
// slice of the global batch, and averages gradients with the others.
//
// Note [Bucketed all-reduce]: parameters are grouped into buckets in
// reverse registration order, the order backward produces their gradients
// (the first bucket small, so communication starts early; then about
// bucket_cap_mb each). A bucket is a contiguous range of the flat gradient
// buffer, because parameters are laid out in registration order: the
// all-reduce runs on a view, with no copies. When the last gradient of a
// bucket is final during backward (Context::grad_ready), the bucket's
// all-reduce (average) is issued at once; on the CPU it runs on Gloo's comm
// thread while backward goes on. finish() waits only for what is still in
// flight, which is the communication the step could not hide.
#pragma once

#include <chrono>
#include <memory>
#include <unordered_map>
#include <vector>

#include "collectives/communicator.h"
#include "runtime/parameters.h"
#include "runtime/trace.h"

namespace tandem::parallel {

struct DdpOptions {
  double bucket_cap_mb = 25.0;
  double first_bucket_mb = 1.0;  // as PyTorch: the first bucket starts comm early
  collectives::Millis timeout{std::chrono::seconds(300)};
  // Gradients on the wire: f32 gradients may travel as bf16 or f16 (half
  // the bytes; each bucket is rounded once before and once after the
  // all-reduce, which Gloo sums in fp32, NCCL in the wire type). Gradients
  // already in bf16 travel as is.
  DType wire_dtype = DType::f32;
};

struct Bucket {
  int64_t begin = 0, end = 0;  // elements of the flat gradient buffer
  std::vector<const Parameter*> params;
  int pending = 0;             // gradients not yet final in this backward
  std::shared_ptr<collectives::Work> work;
  Event ready;                 // GPU: the bucket's gradients are written (compute stream)
  Tensor wire;                 // the bucket in the wire dtype, when it differs from the gradients'
  int64_t bytes(DType dtype) const { return (end - begin) * static_cast<int64_t>(dtype_size(dtype)); }
};

// On the CPU these are host times; on a GPU, device times between events on
// the compute stream (finish() then waits for its end event, so reading them
// costs one synchronization per step).
struct ReduceTimes {
  double comm_ms = 0;     // from the first bucket's issue to the last bucket's completion seen
  double exposed_ms = 0;  // time finish() waited after backward: communication not hidden
};

class Reducer {
 public:
  Reducer(const ParameterSet& params, std::shared_ptr<collectives::Communicator> comm, const DdpOptions& options);

  // Before each backward that should communicate.
  void prepare();
  // A parameter's gradient is final; issues its bucket's all-reduce when
  // the bucket is complete.
  void grad_ready(const Parameter& p, const Stream& compute);
  // Issues any bucket not yet issued (in one group, Note [Comm groups]),
  // waits for all, and reports the times; with `trace`, records when each
  // bucket's all-reduce ran (Work::run_interval) on the comm track.
  ReduceTimes finish(const Stream& compute, TraceWriter* trace = nullptr);

  const std::vector<Bucket>& buckets() const { return buckets_; }

 private:
  void launch(Bucket& b, const Stream& compute);
  void trace_buckets(TraceWriter& trace) const;

  const ParameterSet& params_;
  std::shared_ptr<collectives::Communicator> comm_;
  DdpOptions options_;
  std::vector<Bucket> buckets_;
  std::unordered_map<const Parameter*, int> bucket_of_;
  std::chrono::steady_clock::time_point first_issue_;
  bool issued_any_ = false;
  int first_bucket_ = 0;               // the first bucket issued in this backward
  Event finish_start_, finish_end_;    // GPU: device times of finish()
};

// Splits `params` into buckets as Note [Bucketed all-reduce] says.
std::vector<Bucket> assign_buckets(const ParameterSet& params, const DdpOptions& options);

// Checks that every rank has the same parameters (names, shapes, in order)
// and the same dtype; throws UserError naming the first mismatch and the
// rank. Every rank calls it.
void check_same_parameters(const ParameterSet& params, DType dtype, collectives::Communicator& comm,
                           collectives::Store& store, collectives::Millis timeout);

// Replaces `values` (fp32, any device) on every rank with rank 0's.
void broadcast_from_rank0(const Tensor& values, collectives::Communicator& comm, collectives::Millis timeout);

// The mean over ranks of a host scalar (the logged loss: a mean over the
// global batch when every rank's batch has the same size).
// `device` is where the communicator's buffers live (cpu for Gloo).
double mean_over_ranks(double value, Device device, collectives::Communicator& comm, collectives::Millis timeout);

}  // namespace tandem::parallel
