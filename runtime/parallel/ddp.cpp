#include "runtime/parallel/ddp.h"

#include <fmt/format.h>

#include "collectives/nccl_communicator.h"
#include "kernels/cast.h"
#include "runtime/core/error.h"

namespace tandem::parallel {

using Clock = std::chrono::steady_clock;
using collectives::Buffer;
using collectives::ReduceOp;

std::vector<Bucket> assign_buckets(const ParameterSet& params, const DdpOptions& options) {
  const auto& list = params.list();
  int64_t elem = static_cast<int64_t>(dtype_size(params.grads().dtype()));
  std::vector<Bucket> buckets;
  Bucket current;
  int64_t current_bytes = 0;
  for (auto it = list.rbegin(); it != list.rend(); ++it) {
    double cap_mb = buckets.empty() ? options.first_bucket_mb : options.bucket_cap_mb;
    int64_t cap = static_cast<int64_t>(cap_mb * 1024 * 1024);
    int64_t bytes = it->numel() * elem;
    if (!current.params.empty() && current_bytes + bytes > cap) {
      buckets.push_back(std::move(current));
      current = Bucket();
      current_bytes = 0;
    }
    if (current.params.empty()) current.end = it->offset + it->numel();
    current.begin = it->offset;  // reverse order: each parameter starts lower
    current.params.push_back(&*it);
    current_bytes += bytes;
  }
  if (!current.params.empty()) buckets.push_back(std::move(current));
  return buckets;
}

Reducer::Reducer(const ParameterSet& params, std::shared_ptr<collectives::Communicator> comm, const DdpOptions& options)
    : params_(params), comm_(std::move(comm)), options_(options), buckets_(assign_buckets(params, options)) {
  Device device = params.grads().device();
  DType grad_dtype = params.grads().dtype();
  DType wire = options.wire_dtype;
  if (wire != DType::f32 && wire != DType::bf16 && wire != DType::f16)
    throw UserError(fmt::format("gradients can travel as f32, bf16 or f16, not {}", dtype_name(wire)));
  bool compress = grad_dtype == DType::f32 && wire != DType::f32;  // 16-bit gradients travel as they are
  for (size_t b = 0; b < buckets_.size(); b++) {
    for (const Parameter* p : buckets_[b].params) bucket_of_[p] = static_cast<int>(b);
    buckets_[b].ready = Event::create(device, /*timing=*/true);
    if (compress) buckets_[b].wire = Tensor::empty({buckets_[b].end - buckets_[b].begin}, wire, device);
  }
  finish_start_ = Event::create(device, /*timing=*/true);
  finish_end_ = Event::create(device, /*timing=*/true);
}

void Reducer::prepare() {
  for (Bucket& b : buckets_) {
    b.pending = static_cast<int>(b.params.size());
    b.work.reset();
  }
  issued_any_ = false;
}

void Reducer::launch(Bucket& b, const Stream& compute) {
  // The bucket's gradients were written on the compute stream: the comm
  // stream waits for them there, the host does not (Note [NCCL comm
  // stream]). On the CPU both calls are no-ops: backward has run already.
  Tensor view = params_.grads().view(b.begin, {b.end - b.begin});
  if (b.wire.defined()) kernels::cast(b.wire, view, compute);
  b.ready.record(compute);
  b.ready.wait_on(collectives::comm_stream(*comm_));
  if (!issued_any_) {
    first_issue_ = Clock::now();
    first_bucket_ = static_cast<int>(&b - buckets_.data());
    issued_any_ = true;
  }
  b.work = comm_->all_reduce(Buffer::of(b.wire.defined() ? b.wire : view), ReduceOp::avg);
}

void Reducer::grad_ready(const Parameter& p, const Stream& compute) {
  auto it = bucket_of_.find(&p);
  TANDEM_CHECK(it != bucket_of_.end(), "grad_ready for a parameter the reducer does not hold: " + p.name);
  Bucket& b = buckets_[it->second];
  TANDEM_CHECK(b.pending > 0, "grad_ready twice in one backward for " + p.name);
  if (--b.pending == 0) launch(b, compute);
}

ReduceTimes Reducer::finish(const Stream& compute, TraceWriter* trace) {
  auto start = Clock::now();
  bool gpu = compute.device().is_cuda();
  if (gpu) finish_start_.record(compute);
  {
    collectives::CommGroup group(*comm_);  // Note [Comm groups]: one launch for them all
    for (Bucket& b : buckets_)
      if (!b.work) launch(b, compute);  // parameters backward never reported
  }
  for (Bucket& b : buckets_) {
    b.work->wait_stream(compute, options_.timeout);
    if (b.wire.defined()) kernels::cast(params_.grads().view(b.begin, {b.end - b.begin}), b.wire, compute);
  }
  auto end = Clock::now();
  ReduceTimes t;
  if (gpu) {  // wait_stream did not block the host: time on the device
    finish_end_.record(compute);
    finish_end_.synchronize();
    t.exposed_ms = finish_end_.elapsed_ms_since(finish_start_);
    t.comm_ms = finish_end_.elapsed_ms_since(buckets_[first_bucket_].ready);
  } else {
    t.exposed_ms = std::chrono::duration<double, std::milli>(end - start).count();
    t.comm_ms = std::chrono::duration<double, std::milli>(end - first_issue_).count();
  }
  if (trace) trace_buckets(*trace);
  return t;
}

// Every Work has completed (on the GPU, finish() synchronized with an event
// after them all), so each knows its interval without another wait (Note
// [Comm event times] in collectives/nccl_communicator.h).
void Reducer::trace_buckets(TraceWriter& trace) const {
  for (size_t i = 0; i < buckets_.size(); i++) {
    Clock::time_point run_start, run_end;
    if (!buckets_[i].work->run_interval(&run_start, &run_end)) continue;
    int64_t bytes = buckets_[i].wire.defined() ? static_cast<int64_t>(buckets_[i].wire.nbytes())
                                               : buckets_[i].bytes(params_.grads().dtype());
    trace.complete(fmt::format("all_reduce bucket {}", i), "comm", TraceWriter::Track::comm, run_start, run_end,
                   {{"bucket", i}, {"bytes", bytes}});
  }
}

// A rank's model as one line per parameter; equal strings mean equal models.
static std::string signature(const ParameterSet& params, DType dtype) {
  std::string s = fmt::format("dtype {}\n", dtype_name(dtype));
  for (const Parameter& p : params.list()) s += fmt::format("{} {}\n", p.name, shape_str(p.shape));
  return s;
}

static std::string first_difference(const std::string& a, const std::string& b) {
  size_t pa = 0, pb = 0;
  while (pa < a.size() || pb < b.size()) {
    size_t ea = a.find('\n', pa), eb = b.find('\n', pb);
    std::string la = pa < a.size() ? a.substr(pa, ea - pa) : "(nothing)";
    std::string lb = pb < b.size() ? b.substr(pb, eb - pb) : "(nothing)";
    if (la != lb) return fmt::format("rank 0 has '{}' where it has '{}'", la, lb);
    pa = ea == std::string::npos ? a.size() : ea + 1;
    pb = eb == std::string::npos ? b.size() : eb + 1;
  }
  return "";
}

void check_same_parameters(const ParameterSet& params, DType dtype, collectives::Communicator& comm,
                           collectives::Store& store, collectives::Millis timeout) {
  std::string mine = signature(params, dtype);
  store.set(fmt::format("ddp/signature/{}", comm.rank()), collectives::to_bytes(mine));
  std::string reference = collectives::to_string(store.get("ddp/signature/0", timeout));
  // Every rank compares every rank with rank 0, so all of them fail alike.
  for (int r = 1; r < comm.size(); r++) {
    std::string other = comm.rank() == r ? mine : collectives::to_string(store.get(fmt::format("ddp/signature/{}", r), timeout));
    std::string diff = first_difference(reference, other);
    if (!diff.empty())
      throw UserError(fmt::format("rank {}'s model differs from rank 0's: {}; every rank must build the same "
                                  "model with the same config",
                                  r, diff));
  }
}

void broadcast_from_rank0(const Tensor& values, collectives::Communicator& comm, collectives::Millis timeout) {
  comm.broadcast(Buffer::of(values), 0)->wait(timeout);
}

double mean_over_ranks(double value, Device device, collectives::Communicator& comm, collectives::Millis timeout) {
  Tensor t = Tensor::from_vector({static_cast<float>(value)}, {1});
  if (device.is_cuda()) t = t.to(device);
  comm.all_reduce(Buffer::of(t), ReduceOp::avg)->wait(timeout);
  return t.to_vector()[0];
}

}  // namespace tandem::parallel
