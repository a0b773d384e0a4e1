// Device memory. GPU memory comes from a caching allocator: cudaMalloc is
// slow and synchronizing, so freed blocks are kept in size-binned free lists
// and handed out again. Host memory is 64-byte aligned heap memory.
//
// A block goes back to the cache when the last Tensor view of it is gone,
// and may be handed out again at once, with no event: free a tensor only
// when no stream still uses it (synchronize first). The hot path frees
// nothing: its buffers are made at start and reused.
#pragma once

#include <cstddef>

#include "runtime/core/device.h"

namespace tandem {

struct AllocatorStats {
  size_t allocated_bytes = 0;  // handed out now
  size_t reserved_bytes = 0;   // held from the driver (handed out + cached)
  size_t peak_allocated_bytes = 0;
  size_t num_device_mallocs = 0;  // cudaMalloc calls so far
};

void* device_alloc(Device device, size_t bytes);
void device_free(Device device, void* ptr, size_t bytes);
// Returns every cached, unused GPU block to the driver.
void empty_cache(Device device);
AllocatorStats allocator_stats(Device device);

// Rounded size actually reserved for a request of `bytes` (exposed for tests).
size_t allocation_size(size_t bytes);

}  // namespace tandem
