#include "runtime/augment.h"

#include "runtime/core/philox.h"

namespace tandem {

namespace {
constexpr uint64_t kAugmentKey = 0x6A09E667F3BCC909ull;  // keeps these draws apart from the sampler's
}  // namespace

AugmentDraw draw_augment(const AugmentOptions& o, uint64_t seed, int64_t epoch, int64_t sample) {
  // One counter per (epoch, sample): 2^40 samples per epoch is more than memory holds.
  uint64_t counter = (static_cast<uint64_t>(epoch) << 40) + static_cast<uint64_t>(sample);
  Philox4 r = philox4x32(counter, seed ^ kAugmentKey);
  AugmentDraw d;
  auto span = static_cast<uint64_t>(2 * o.crop_padding + 1);
  d.dy = static_cast<int64_t>(r.v[0] % span);  // 0 when there is no padding
  d.dx = static_cast<int64_t>(r.v[1] % span);
  d.flip = o.hflip && (r.v[2] & 1u);
  return d;
}

void augment_image(float* out, const float* in, int64_t rows, int64_t cols, float black, int64_t crop_padding,
                   const AugmentDraw& d) {
  // Output pixel (y, x) of the window is padded pixel (y + dy, x + dx), that
  // is input pixel (y + dy - p, x + dx - p); the flip reads column cols-1-x.
  const int64_t shift_y = d.dy - crop_padding, shift_x = d.dx - crop_padding;
  for (int64_t y = 0; y < rows; y++) {
    const int64_t iy = y + shift_y;
    float* row = out + y * cols;
    for (int64_t x = 0; x < cols; x++) {
      const int64_t ix = (d.flip ? cols - 1 - x : x) + shift_x;
      bool inside = iy >= 0 && iy < rows && ix >= 0 && ix < cols;
      row[x] = inside ? in[iy * cols + ix] : black;
    }
  }
}

}  // namespace tandem
