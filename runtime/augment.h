// Image augmentation for training, as torchvision's RandomCrop(size,
// padding=p) followed by RandomHorizontalFlip(): the image is padded with p
// black pixels on every side, a window of the original size is cut at a
// random offset, and the result is mirrored left-right with probability 1/2.
//
// The draws are Philox keyed by the run's seed with counter (epoch, sample
// index): a pure function of which sample is shown in which epoch. So they
// do not depend on the world size, the rank or the batch a sample falls in,
// and a resumed run draws what the uninterrupted one did.
#pragma once

#include <cstdint>

namespace tandem {

struct AugmentOptions {
  int64_t crop_padding = 0;  // p: offsets in [-p, p] each way; 0: no crop
  bool hflip = false;
  bool enabled() const { return crop_padding > 0 || hflip; }
};

// What augment_image does to one sample: the window's top-left corner in the
// padded image (dy, dx in [0, 2p]) and whether it is mirrored.
struct AugmentDraw {
  int64_t dy = 0, dx = 0;
  bool flip = false;
};

AugmentDraw draw_augment(const AugmentOptions& options, uint64_t seed, int64_t epoch, int64_t sample);

// out (rows, cols) = the augmented in (rows, cols); pixels from the padding
// read `black`. out and in must not overlap.
void augment_image(float* out, const float* in, int64_t rows, int64_t cols, float black, int64_t crop_padding,
                   const AugmentDraw& draw);

}  // namespace tandem
