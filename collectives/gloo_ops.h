// The data movement of the Gloo backend: one function per operation over a
// connected Gloo context, in the manner of Gloo's own algorithms (setup in
// the options, then Gloo moves the data). No threads and no queue: the
// communicator (gloo_communicator.cpp) calls these in issue order on its
// comm thread. Internal to collectives/.
#pragma once

#include <gloo/context.h>
#include <gloo/transport/unbound_buffer.h>

#include <memory>
#include <vector>

#include "collectives/comm_common.h"

namespace tandem::collectives::detail {

class GlooOps {
 public:
  // `timeout` bounds every Gloo wait (Note [Gloo failures] in gloo_communicator.cpp).
  GlooOps(std::shared_ptr<gloo::Context> context, Millis timeout) : context_(std::move(context)), timeout_(timeout) {}

  // Runs one collective (not send/recv) to completion; a collective's Gloo
  // tag is its seq. Throws what Gloo throws (gloo::IoException on a timeout).
  void run(const OpDesc& op);
  // Posts a send/recv and returns its buffer, to wait on with waitSend/waitRecv.
  std::unique_ptr<gloo::transport::UnboundBuffer> post(const OpDesc& op);

 private:
  template <typename T>
  void gloo_all_reduce(T* data, size_t count, ReduceOp op, int64_t seq);
  template <typename T>
  void finish_avg(T* data, size_t count, ReduceOp op) const;
  void all_reduce(const OpDesc& op);
  void reduce_scatter(const OpDesc& op);
  void broadcast(const OpDesc& op);
  void all_gather(const OpDesc& op);
  void barrier(const OpDesc& op);
  float* widen(const Buffer& b, size_t first, size_t n);
  static void narrow(const float* wide, const Buffer& b, size_t first, size_t n);

  std::shared_ptr<gloo::Context> context_;
  Millis timeout_;
  std::vector<float> scratch_f32_;  // bf16/f16 reductions and reduce_scatter: reused, never shrunk
  std::vector<int32_t> scratch_i32_;
};

}  // namespace tandem::collectives::detail
