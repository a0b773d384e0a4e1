// The Gloo backend's data movement (see gloo_ops.h).
#include "collectives/gloo_ops.h"

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/types.h>

#include <algorithm>

namespace tandem::collectives::detail {

namespace {

constexpr uint8_t kP2pSlotPrefix = 0x40;  // above Gloo's own collective prefixes (0x01..0x08)

template <typename T>
void sum_of(void* c, const void* a, const void* b, size_t n) {
  for (size_t i = 0; i < n; i++) static_cast<T*>(c)[i] = static_cast<const T*>(a)[i] + static_cast<const T*>(b)[i];
}
template <typename T>
void max_of(void* c, const void* a, const void* b, size_t n) {
  for (size_t i = 0; i < n; i++)
    static_cast<T*>(c)[i] = std::max(static_cast<const T*>(a)[i], static_cast<const T*>(b)[i]);
}

}  // namespace

void GlooOps::run(const OpDesc& op) {
  switch (op.kind) {
    case OpKind::all_reduce: return all_reduce(op);
    case OpKind::reduce_scatter: return reduce_scatter(op);
    case OpKind::broadcast: return broadcast(op);
    case OpKind::all_gather: return all_gather(op);
    case OpKind::barrier: return barrier(op);
    case OpKind::send:
    case OpKind::recv: break;
  }
  TANDEM_CHECK(false, std::string("GlooOps::run cannot run ") + op_name(op.kind) + "; post it");
}

std::unique_ptr<gloo::transport::UnboundBuffer> GlooOps::post(const OpDesc& op) {
  auto buf = context_->createUnboundBuffer(op.out.data, op.out.bytes());
  // The n-th send from a to b matches the n-th recv at b from a: same slot.
  uint64_t slot = gloo::Slot::build(kP2pSlotPrefix, static_cast<uint32_t>(op.seq));
  if (op.kind == OpKind::send) buf->send(op.peer, slot);
  else buf->recv(op.peer, slot);
  return buf;
}

template <typename T>
void GlooOps::gloo_all_reduce(T* data, size_t count, ReduceOp op, int64_t seq) {
  gloo::AllreduceOptions opts(context_);
  opts.setOutput(data, count);
  opts.setReduceFunction(op == ReduceOp::max ? &max_of<T> : &sum_of<T>);
  opts.setTag(static_cast<uint32_t>(seq));
  opts.setTimeout(timeout_);
  gloo::allreduce(opts);
}

// avg = sum, then divide by the group size (integer division for i32).
template <typename T>
void GlooOps::finish_avg(T* data, size_t count, ReduceOp op) const {
  if (op != ReduceOp::avg) return;
  T n = static_cast<T>(context_->size);
  for (size_t i = 0; i < count; i++) data[i] /= n;
}

// f32 and i32 reduce in place. bf16 and f16 widen to f32 scratch, reduce
// and round back once: more accurate than rounding at every ring step, for
// twice the bytes on the wire.
void GlooOps::all_reduce(const OpDesc& op) {
  const Buffer& b = op.out;
  size_t n = static_cast<size_t>(b.count);
  if (b.dtype == DType::i32) {
    gloo_all_reduce(static_cast<int32_t*>(b.data), n, op.reduce, op.seq);
    finish_avg(static_cast<int32_t*>(b.data), n, op.reduce);
  } else if (b.dtype == DType::f32) {
    gloo_all_reduce(static_cast<float*>(b.data), n, op.reduce, op.seq);
    finish_avg(static_cast<float*>(b.data), n, op.reduce);
  } else {
    float* wide = widen(b, 0, n);
    gloo_all_reduce(wide, n, op.reduce, op.seq);
    finish_avg(wide, n, op.reduce);
    narrow(wide, b, 0, n);
  }
}

// Gloo 0.0~git2022 has no reduce-scatter over unbound buffers, so this is an
// all-reduce of a copy of the whole input, of which this rank keeps its
// block: correct, at twice a ring reduce-scatter's traffic.
void GlooOps::reduce_scatter(const OpDesc& op) {
  size_t n = static_cast<size_t>(op.in.count), block = static_cast<size_t>(op.out.count);
  size_t first = block * static_cast<size_t>(context_->rank);
  if (op.in.dtype == DType::i32) {
    scratch_i32_.assign(static_cast<const int32_t*>(op.in.data), static_cast<const int32_t*>(op.in.data) + n);
    gloo_all_reduce(scratch_i32_.data(), n, op.reduce, op.seq);
    finish_avg(scratch_i32_.data() + first, block, op.reduce);
    std::copy_n(scratch_i32_.data() + first, block, static_cast<int32_t*>(op.out.data));
  } else {
    float* wide = widen(op.in, 0, n);
    gloo_all_reduce(wide, n, op.reduce, op.seq);
    finish_avg(wide + first, block, op.reduce);
    narrow(wide + first, op.out, 0, block);
  }
}

void GlooOps::broadcast(const OpDesc& op) {
  gloo::BroadcastOptions opts(context_);
  opts.setOutput(static_cast<uint8_t*>(op.out.data), op.out.bytes());  // the root sends from it in place
  opts.setRoot(op.peer);
  opts.setTag(static_cast<uint32_t>(op.seq));
  opts.setTimeout(timeout_);
  gloo::broadcast(opts);
}

void GlooOps::all_gather(const OpDesc& op) {
  gloo::AllgatherOptions opts(context_);
  uint8_t* mine = static_cast<uint8_t*>(op.out.data) + op.in.bytes() * static_cast<size_t>(context_->rank);
  if (op.in.data != mine) opts.setInput(static_cast<uint8_t*>(op.in.data), op.in.bytes());  // else in place
  opts.setOutput(static_cast<uint8_t*>(op.out.data), op.out.bytes());
  opts.setTag(static_cast<uint32_t>(op.seq));
  opts.setTimeout(timeout_);
  gloo::allgather(opts);
}

void GlooOps::barrier(const OpDesc& op) {
  gloo::BarrierOptions opts(context_);
  opts.setTag(static_cast<uint32_t>(op.seq));
  opts.setTimeout(timeout_);
  gloo::barrier(opts);
}

// f32 scratch holding elements [first, first + n) of `b` (f32, bf16 or
// f16; runtime/core/dtype.h converts, as the cast kernels do).
float* GlooOps::widen(const Buffer& b, size_t first, size_t n) {
  scratch_f32_.resize(n);
  if (b.dtype == DType::f32) {
    std::copy_n(static_cast<const float*>(b.data) + first, n, scratch_f32_.data());
    return scratch_f32_.data();
  }
  const uint16_t* src = static_cast<const uint16_t*>(b.data) + first;
  bool f16 = b.dtype == DType::f16;
  for (size_t i = 0; i < n; i++) scratch_f32_[i] = f16 ? f16_to_f32(src[i]) : bf16_to_f32(src[i]);
  return scratch_f32_.data();
}

void GlooOps::narrow(const float* wide, const Buffer& b, size_t first, size_t n) {
  if (b.dtype == DType::f32) {
    std::copy_n(wide, n, static_cast<float*>(b.data) + first);
    return;
  }
  uint16_t* dst = static_cast<uint16_t*>(b.data) + first;
  bool f16 = b.dtype == DType::f16;
  for (size_t i = 0; i < n; i++) dst[i] = f16 ? f32_to_f16(wide[i]) : f32_to_bf16(wide[i]);
}

}  // namespace tandem::collectives::detail
