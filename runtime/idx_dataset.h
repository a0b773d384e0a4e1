// Image classification data in the idx format of MNIST and Fashion-MNIST
// (gzipped or plain: zlib reads both), held in memory as normalised floats.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tandem {

struct ImageDataset {
  int64_t count = 0;
  int64_t rows = 0, cols = 0;
  std::vector<float> images;    // (count, rows * cols), normalised
  std::vector<int32_t> labels;  // (count)
  float black = 0;              // a pixel of value 0 after normalisation: what padding shows
  int64_t features() const { return rows * cols; }
};

// Reads an idx3 image file and its idx1 label file; pixels become
// (x / 255 - mean) / std. Throws UserError naming the file and the problem
// for a missing, truncated or malformed file, or mismatched counts.
ImageDataset load_idx_dataset(const std::string& images_path, const std::string& labels_path, float mean,
                              float stddev);

// The train or test split of Fashion-MNIST under `dir`
// (train-images-idx3-ubyte.gz, ...; also accepts the files without .gz).
ImageDataset load_fashion_mnist(const std::string& dir, bool train);
constexpr int64_t kFashionMnistClasses = 10;

}  // namespace tandem
