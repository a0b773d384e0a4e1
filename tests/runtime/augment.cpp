// Image augmentation (runtime/augment.h): the crop and flip against a
// direct pad-crop-flip, and draws fixed by (seed, epoch, sample) only.
#include <set>

#include "runtime/augment.h"
#include "runtime/classifier_task.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;

TEST_CASE("augment_image is torchvision's pad, crop, then flip", "[augment]") {
  uint64_t seed = fresh_seed();
  INFO("seed=" << seed);
  const int64_t rows = 5, cols = 7, pad = 2;
  const float black = -0.5f;
  std::vector<float> in = random_vector(rows * cols, seed);
  // The padded image, built directly.
  const int64_t prows = rows + 2 * pad, pcols = cols + 2 * pad;
  std::vector<float> padded(prows * pcols, black);
  for (int64_t y = 0; y < rows; y++)
    for (int64_t x = 0; x < cols; x++) padded[(y + pad) * pcols + x + pad] = in[y * cols + x];
  for (int64_t dy = 0; dy <= 2 * pad; dy++)
    for (int64_t dx = 0; dx <= 2 * pad; dx++)
      for (bool flip : {false, true}) {
        INFO("dy=" << dy << " dx=" << dx << " flip=" << flip);
        std::vector<float> out(rows * cols, 123.f);
        augment_image(out.data(), in.data(), rows, cols, black, pad, {.dy = dy, .dx = dx, .flip = flip});
        for (int64_t y = 0; y < rows; y++)
          for (int64_t x = 0; x < cols; x++) {
            float crop = padded[(y + dy) * pcols + (flip ? cols - 1 - x : x) + dx];
            REQUIRE(out[y * cols + x] == crop);
          }
      }
}

TEST_CASE("augmentation draws depend on (seed, epoch, sample) only and cover every offset", "[augment]") {
  AugmentOptions o{.crop_padding = 2, .hflip = true};
  std::set<std::tuple<int64_t, int64_t, bool>> seen;
  for (int64_t sample = 0; sample < 2000; sample++) {
    AugmentDraw d = draw_augment(o, 7, 3, sample), again = draw_augment(o, 7, 3, sample);
    REQUIRE((d.dy == again.dy && d.dx == again.dx && d.flip == again.flip));
    REQUIRE((d.dy >= 0 && d.dy <= 4 && d.dx >= 0 && d.dx <= 4));
    seen.insert({d.dy, d.dx, d.flip});
  }
  REQUIRE(seen.size() == 5 * 5 * 2);  // 2000 draws miss none of the 50 choices
  // Another epoch or seed draws differently (for most samples).
  int same_epoch = 0, same_seed = 0;
  for (int64_t sample = 0; sample < 200; sample++) {
    AugmentDraw d = draw_augment(o, 7, 3, sample), e = draw_augment(o, 7, 4, sample), s = draw_augment(o, 8, 3, sample);
    same_epoch += d.dy == e.dy && d.dx == e.dx && d.flip == e.flip;
    same_seed += d.dy == s.dy && d.dx == s.dx && d.flip == s.flip;
  }
  REQUIRE(same_epoch < 20);
  REQUIRE(same_seed < 20);
  // Off: the identity.
  AugmentDraw none = draw_augment({}, 7, 3, 11);
  REQUIRE((none.dy == 0 && none.dx == 0 && !none.flip));
}

TEST_CASE("an augmented batch holds the same images on 1 and on 2 ranks", "[augment]") {
  // 16 images of 4x4, batch 4 per rank: rank r's batch at a step is a slice
  // of the 1-rank batch of 8 at that step, each image augmented alike.
  ImageDataset data;
  data.count = 16, data.rows = 4, data.cols = 4, data.black = -1.f;
  data.images = random_vector(data.count * 16, fresh_seed());
  for (int64_t i = 0; i < data.count; i++) data.labels.push_back(static_cast<int32_t>(i % 10));
  AugmentOptions o{.crop_padding = 1, .hflip = true};
  Context ctx;
  auto batch_of = [&](int rank, int world, int64_t step) {
    EpochSampler sampler(data.count, 8 / world, 5, rank, world);
    std::vector<int64_t> idx = sampler.batch(step);
    ImageBatch b(8 / world, 16, ctx);
    b.fill(data, idx.data(), 8 / world, ctx, o, 5, step / sampler.steps_per_epoch());
    return b.x.to_vector();
  };
  for (int64_t step : {0, 1, 2, 5}) {
    std::vector<float> whole = batch_of(0, 1, step), r0 = batch_of(0, 2, step), r1 = batch_of(1, 2, step);
    r0.insert(r0.end(), r1.begin(), r1.end());
    REQUIRE(r0 == whole);
  }
}
