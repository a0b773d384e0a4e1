#include "runtime/core/allocator.h"

#include <fmt/format.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include "runtime/core/error.h"

#if TANDEM_HAS_CUDA
#include <cuda_runtime.h>

#include "runtime/core/cuda_check.h"
#endif

namespace tandem {

namespace {

constexpr size_t kHostAlignment = 64;     // a cache line; enough for AVX-512 loads
constexpr size_t kSmallRound = 512;       // requests below 1 MiB round to 512 B
constexpr size_t kLargeRound = 2 << 20;   // larger ones to 2 MiB, to bound the bins

// One cache per CUDA device, protected by its mutex.
struct DeviceCache {
  std::mutex mutex;
  std::multimap<size_t, void*> free_blocks;  // size -> block, for best fit
  AllocatorStats stats;
};

DeviceCache& cache_for(int index) {
  static std::mutex table_mutex;
  static std::map<int, DeviceCache> caches;
  std::lock_guard<std::mutex> lock(table_mutex);
  return caches[index];
}

}  // namespace

size_t allocation_size(size_t bytes) {
  if (bytes == 0) bytes = 1;
  size_t round = bytes < (1u << 20) ? kSmallRound : kLargeRound;
  return (bytes + round - 1) / round * round;
}

#if TANDEM_HAS_CUDA

static void* cuda_malloc_with_retry(DeviceCache& cache, int index, size_t size) {
  void* ptr = nullptr;
  CUDA_CHECK(cudaSetDevice(index));
  if (cudaMalloc(&ptr, size) == cudaSuccess) return ptr;
  cudaGetLastError();
  // Out of memory: give the cached blocks back and try once more.
  for (auto& [block_size, block] : cache.free_blocks) {
    CUDA_CHECK(cudaFree(block));
    cache.stats.reserved_bytes -= block_size;
  }
  cache.free_blocks.clear();
  cudaError_t status = cudaMalloc(&ptr, size);
  if (status != cudaSuccess) {
    throw_library_error("CUDA", static_cast<int>(status),
                        fmt::format("out of memory allocating {} bytes on cuda:{} ({} in use)",
                                    size, index, cache.stats.allocated_bytes)
                            .c_str(),
                        "cudaMalloc", __FILE__, __LINE__);
  }
  return ptr;
}

#endif

void* device_alloc(Device device, size_t bytes) {
  if (device.is_cpu()) {
    size_t size = (bytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
    void* ptr = std::aligned_alloc(kHostAlignment, size == 0 ? kHostAlignment : size);
    if (!ptr) throw std::bad_alloc();
    return ptr;
  }
#if TANDEM_HAS_CUDA
  DeviceCache& cache = cache_for(device.index);
  std::lock_guard<std::mutex> lock(cache.mutex);
  size_t size = allocation_size(bytes);
  void* ptr = nullptr;
  // Sizes are rounded into bins, so a cached block is reused only for the
  // same bin: a large block never strands most of itself on a small request.
  auto it = cache.free_blocks.find(size);
  if (it != cache.free_blocks.end()) {
    ptr = it->second;
    cache.free_blocks.erase(it);
  } else {
    ptr = cuda_malloc_with_retry(cache, device.index, size);
    cache.stats.reserved_bytes += size;
    cache.stats.num_device_mallocs++;
  }
  cache.stats.allocated_bytes += size;
  if (cache.stats.allocated_bytes > cache.stats.peak_allocated_bytes)
    cache.stats.peak_allocated_bytes = cache.stats.allocated_bytes;
  return ptr;
#else
  TANDEM_CHECK(false, "this build has no CUDA");
#endif
}

void device_free(Device device, void* ptr, size_t bytes) {
  if (!ptr) return;
  if (device.is_cpu()) {
    std::free(ptr);
    return;
  }
#if TANDEM_HAS_CUDA
  DeviceCache& cache = cache_for(device.index);
  std::lock_guard<std::mutex> lock(cache.mutex);
  size_t size = allocation_size(bytes);
  cache.stats.allocated_bytes -= size;
  cache.free_blocks.emplace(size, ptr);
#else
  (void)bytes;
  TANDEM_CHECK(false, "this build has no CUDA");
#endif
}

void empty_cache(Device device) {
  if (device.is_cpu()) return;
#if TANDEM_HAS_CUDA
  DeviceCache& cache = cache_for(device.index);
  std::lock_guard<std::mutex> lock(cache.mutex);
  CUDA_CHECK(cudaSetDevice(device.index));
  for (auto& [size, block] : cache.free_blocks) {
    CUDA_CHECK(cudaFree(block));
    cache.stats.reserved_bytes -= size;
  }
  cache.free_blocks.clear();
#endif
}

AllocatorStats allocator_stats(Device device) {
  if (device.is_cpu()) return {};
  DeviceCache& cache = cache_for(device.index);
  std::lock_guard<std::mutex> lock(cache.mutex);
  return cache.stats;
}

}  // namespace tandem
