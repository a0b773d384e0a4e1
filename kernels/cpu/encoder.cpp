// CPU reference for the token + position encoder. See kernels/encoder.h.
#include <string>

#include "kernels/encoder.h"

namespace tandem::kernels::cpu {

namespace {

// Throws before anything is written, so a bad batch leaves the outputs (and
// both gradients) as they were.
void check_tokens(const int32_t* tokens, int64_t B, int64_t T, int64_t V, const char* op) {
  for (int64_t n = 0; n < B * T; n++)
    TANDEM_CHECK(tokens[n] >= 0 && tokens[n] < V,
                 std::string(op) + ": token " + std::to_string(tokens[n]) + " at (b, t) = (" +
                     std::to_string(n / T) + ", " + std::to_string(n % T) + ") is outside [0, " +
                     std::to_string(V) + ")");
}

}  // namespace

void encoder_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int64_t B, int64_t T,
                     int64_t V, int64_t C) {
  check_tokens(tokens, B, T, V, "encoder_forward");
  for (int64_t b = 0; b < B; b++) {
    for (int64_t t = 0; t < T; t++) {
      const float* tok = wte + tokens[b * T + t] * C;
      const float* pos = wpe + t * C;
      float* y = out + (b * T + t) * C;
      for (int64_t c = 0; c < C; c++) y[c] = tok[c] + pos[c];
    }
  }
}

// dwte: embedding_backward over the B * T rows, in increasing n = b * T + t.
// dwpe: for every (t, c), additions in increasing b. Both are the orders the
// CUDA kernels reproduce bit for bit (Note [Deterministic encoder backward]).
void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int64_t B, int64_t T,
                      int64_t V, int64_t C) {
  check_tokens(tokens, B, T, V, "encoder_backward");  // before dwte or dwpe is touched
  embedding_backward(dwte, dout, tokens, B * T, V, C);
  for (int64_t b = 0; b < B; b++) {
    for (int64_t t = 0; t < T; t++) {
      const float* dy = dout + (b * T + t) * C;
      float* row = dwpe + t * C;
      for (int64_t c = 0; c < C; c++) row[c] += dy[c];
    }
  }
}

}  // namespace tandem::kernels::cpu
