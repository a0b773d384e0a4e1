// Core types on a GPU: the caching allocator, host/device copies, streams
// and events.
#include "runtime/core/allocator.h"
#include "runtime/core/tensor.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

TEST_CASE("the caching allocator reuses freed blocks", "[gpu][core]") {
  Device gpu = Device::cuda(0);
  { Tensor warm = Tensor::empty({1000}, DType::f32, gpu); }
  size_t mallocs = allocator_stats(gpu).num_device_mallocs;
  for (int i = 0; i < 10; i++) {
    Tensor t = Tensor::empty({1000}, DType::f32, gpu);  // same bin every time
    REQUIRE(t.data() != nullptr);
  }
  REQUIRE(allocator_stats(gpu).num_device_mallocs == mallocs);
  Tensor big = Tensor::empty({int64_t{1} << 22}, DType::f32, gpu);
  REQUIRE(allocator_stats(gpu).num_device_mallocs == mallocs + 1);
  REQUIRE(allocator_stats(gpu).allocated_bytes >= big.nbytes());
  big = Tensor();
  empty_cache(gpu);
  REQUIRE(allocator_stats(gpu).allocated_bytes == 0);
}

TEST_CASE("tensors round-trip between host and device", "[gpu][core]") {
  Device gpu = Device::cuda(0);
  for (int64_t n : kOddSizes) {
    std::vector<float> v = random_vector(n, fresh_seed());
    Tensor host = Tensor::from_vector(v, {n});
    Tensor dev = host.to(gpu);
    REQUIRE(dev.device() == gpu);
    REQUIRE(dev.to_vector() == v);
    Tensor view = dev.view(n / 2, {n - n / 2});  // a view inside a device buffer
    REQUIRE(view.to_vector() == std::vector<float>(v.begin() + n / 2, v.end()));
    Stream s = Stream::create(gpu);
    dev.zero(s);
    s.synchronize();
    REQUIRE(dev.to_vector() == std::vector<float>(n, 0.f));
  }
}

TEST_CASE("events time work on a stream", "[gpu][core]") {
  Device gpu = Device::cuda(0);
  Stream s = Stream::create(gpu);
  Event start = Event::create(gpu, true), stop = Event::create(gpu, true);
  Tensor a = Tensor::empty({int64_t{1} << 24}, DType::f32, gpu), b = Tensor::empty({int64_t{1} << 24}, DType::f32, gpu);
  start.record(s);
  b.copy_from(a, s);
  stop.record(s);
  stop.synchronize();
  float ms = stop.elapsed_ms_since(start);
  REQUIRE(ms > 0.f);
  REQUIRE(ms < 1000.f);
}
