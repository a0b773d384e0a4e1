// CPU reference for the embedding lookup. See kernels/embedding.h.
#include <string>

#include "kernels/embedding.h"

namespace tandem::kernels::cpu {

namespace {

// Throws before anything is written, so a bad batch leaves the outputs as
// they were.
void check_indices(const int32_t* indices, int64_t N, int64_t V, const char* op) {
  for (int64_t n = 0; n < N; n++)
    TANDEM_CHECK(indices[n] >= 0 && indices[n] < V, std::string(op) + ": index " + std::to_string(indices[n]) +
                                                        " at position " + std::to_string(n) + " is outside [0, " +
                                                        std::to_string(V) + ")");
}

}  // namespace

void embedding_forward(float* out, const float* table, const int32_t* indices, int64_t N, int64_t V, int64_t C) {
  check_indices(indices, N, V, "embedding_forward");
  for (int64_t n = 0; n < N; n++) {
    const float* row = table + indices[n] * C;
    for (int64_t c = 0; c < C; c++) out[n * C + c] = row[c];
  }
}

// The fp32 additions run in increasing n for every (v, c): the order the CUDA
// kernel reproduces bit for bit (Note [Deterministic embedding backward]).
void embedding_backward(float* dtable, const float* dout, const int32_t* indices, int64_t N, int64_t V, int64_t C) {
  check_indices(indices, N, V, "embedding_backward");
  for (int64_t n = 0; n < N; n++) {
    float* row = dtable + indices[n] * C;
    for (int64_t c = 0; c < C; c++) row[c] += dout[n * C + c];
  }
}

}  // namespace tandem::kernels::cpu
