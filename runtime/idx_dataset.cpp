#include "runtime/idx_dataset.h"

#include <fmt/format.h>
#include <zlib.h>

#include <filesystem>
#include <memory>

#include "runtime/core/error.h"

namespace tandem {

namespace {

constexpr uint32_t kIdxImagesMagic = 0x00000803;  // unsigned byte, 3 dims
constexpr uint32_t kIdxLabelsMagic = 0x00000801;  // unsigned byte, 1 dim
constexpr int kNumClasses = 10;
// Fashion-MNIST training-set pixel statistics (of x / 255).
constexpr float kFashionMean = 0.2860f, kFashionStd = 0.3530f;

struct GzFile {
  explicit GzFile(const std::string& path) : path(path), handle(gzopen(path.c_str(), "rb")) {
    if (!handle) throw UserError(fmt::format("cannot open data file {}", path));
  }
  ~GzFile() { gzclose(handle); }

  void read(void* dst, size_t bytes) {
    size_t done = 0;
    while (done < bytes) {
      unsigned chunk = static_cast<unsigned>(std::min<size_t>(bytes - done, 1u << 30));
      int got = gzread(handle, static_cast<char*>(dst) + done, chunk);
      if (got <= 0) throw UserError(fmt::format("data file {} is truncated or corrupt", path));
      done += static_cast<size_t>(got);
    }
  }
  uint32_t read_be32() {
    unsigned char b[4];
    read(b, 4);
    return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3];
  }

  std::string path;
  gzFile handle;
};

void expect_magic(GzFile& f, uint32_t want, const char* what) {
  uint32_t magic = f.read_be32();
  if (magic != want)
    throw UserError(fmt::format("{} is not an idx {} file (magic 0x{:08x}, expected 0x{:08x})", f.path, what,
                                magic, want));
}

}  // namespace

ImageDataset load_idx_dataset(const std::string& images_path, const std::string& labels_path, float mean,
                              float stddev) {
  ImageDataset ds;
  GzFile images(images_path);
  expect_magic(images, kIdxImagesMagic, "image");
  ds.count = images.read_be32();
  ds.rows = images.read_be32();
  ds.cols = images.read_be32();
  constexpr int64_t kMaxSide = 1 << 14;  // rejects garbage headers before a huge allocation
  if (ds.rows <= 0 || ds.cols <= 0 || ds.rows > kMaxSide || ds.cols > kMaxSide || ds.count <= 0)
    throw UserError(fmt::format("{} has an implausible shape ({} x {} x {})", images_path, ds.count, ds.rows, ds.cols));

  GzFile labels(labels_path);
  expect_magic(labels, kIdxLabelsMagic, "label");
  int64_t label_count = labels.read_be32();
  if (label_count != ds.count)
    throw UserError(fmt::format("{} has {} images but {} has {} labels", images_path, ds.count, labels_path,
                                label_count));

  std::vector<unsigned char> pixels(static_cast<size_t>(ds.count * ds.features()));
  images.read(pixels.data(), pixels.size());
  ds.images.resize(pixels.size());
  for (size_t i = 0; i < pixels.size(); i++) ds.images[i] = (pixels[i] / 255.f - mean) / stddev;
  ds.black = (0.f - mean) / stddev;

  std::vector<unsigned char> raw_labels(static_cast<size_t>(ds.count));
  labels.read(raw_labels.data(), raw_labels.size());
  ds.labels.resize(raw_labels.size());
  for (size_t i = 0; i < raw_labels.size(); i++) {
    if (raw_labels[i] >= kNumClasses)
      throw UserError(fmt::format("{}: label {} at index {} is out of range [0, {})", labels_path,
                                  int{raw_labels[i]}, i, kNumClasses));
    ds.labels[i] = raw_labels[i];
  }
  return ds;
}

static std::string find_file(const std::string& dir, const std::string& stem) {
  for (const char* suffix : {".gz", ""}) {
    std::filesystem::path p = std::filesystem::path(dir) / (stem + suffix);
    if (std::filesystem::exists(p)) return p.string();
  }
  throw UserError(fmt::format("data file {}/{}.gz not found (install the Debian package dataset-fashion-mnist "
                              "with tools/setup.sh, or set data_dir)",
                              dir, stem));
}

ImageDataset load_fashion_mnist(const std::string& dir, bool train) {
  std::string prefix = train ? "train" : "t10k";
  return load_idx_dataset(find_file(dir, prefix + "-images-idx3-ubyte"), find_file(dir, prefix + "-labels-idx1-ubyte"),
                          kFashionMean, kFashionStd);
}

}  // namespace tandem
