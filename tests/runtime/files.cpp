// safetensors, checkpoints and idx files: round trips, and clear errors for
// damaged files.
#include <zlib.h>

#include <fmt/format.h>

#include <filesystem>
#include <fstream>

#include "runtime/checkpoint.h"
#include "runtime/idx_dataset.h"
#include "runtime/safetensors.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
namespace fs = std::filesystem;

namespace {

// A safetensors file whose JSON header is `header` and data `data`.
std::string safetensors_bytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; i++) out[i] = static_cast<char>(n >> (8 * i));
  return out + header + data;
}

}  // namespace

TEST_CASE("safetensors round-trips tensors of every dtype", "[files]") {
  fs::path dir = temp_dir("st");
  Tensor a = random_tensor({3, 5}, fresh_seed());
  Tensor b = Tensor::empty({4}, DType::i32, Device::cpu());
  for (int i = 0; i < 4; i++) b.data_as<int32_t>()[i] = i * 1000 - 7;
  Tensor c = Tensor::empty({2, 0}, DType::bf16, Device::cpu());
  write_safetensors((dir / "x.safetensors").string(), {{"a", a}, {"b", b}, {"empty", c}}, {{"format", "pt"}});

  SafetensorsFile f = read_safetensors((dir / "x.safetensors").string());
  REQUIRE(f.metadata.at("format") == "pt");
  REQUIRE(f.tensors.at("a").to_vector() == a.to_vector());
  REQUIRE(f.tensors.at("a").shape() == Shape{3, 5});
  REQUIRE(f.tensors.at("b").dtype() == DType::i32);
  REQUIRE(f.tensors.at("b").data_as<int32_t>()[3] == 2993);
  REQUIRE(f.tensors.at("empty").shape() == Shape{2, 0});
  // The data section starts 8-byte aligned, as the format asks.
  std::string bytes = read_bytes(dir / "x.safetensors");
  uint64_t header = 0;
  for (int i = 0; i < 8; i++) header |= uint64_t{static_cast<unsigned char>(bytes[i])} << (8 * i);
  REQUIRE(header % 8 == 0);
  fs::remove_all(dir);
}

TEST_CASE("malformed safetensors files are rejected with a clear error", "[files]") {
  fs::path dir = temp_dir("stbad");
  fs::path p = dir / "bad.safetensors";
  auto expect_rejected = [&](const std::string& bytes) {
    write_bytes(p, bytes);
    REQUIRE_THROWS_AS(read_safetensors(p.string()), UserError);
  };
  expect_rejected("");                                                  // empty
  expect_rejected(std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8));  // huge header length
  expect_rejected(safetensors_bytes("not json", ""));
  expect_rejected(safetensors_bytes("[1,2]", ""));
  expect_rejected(safetensors_bytes(R"({"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", std::string(8, 0)));
  expect_rejected(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", std::string(4, 0)));
  expect_rejected(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, 0)));
  expect_rejected(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", std::string(4, 0)));
  expect_rejected(safetensors_bytes(
      R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}})", std::string(16, 0)));
  expect_rejected(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1]}})", std::string(4, 0)));
  REQUIRE_THROWS_AS(read_safetensors((dir / "missing").string()), UserError);
  fs::remove_all(dir);
}

TEST_CASE("checkpoints are written whole and verified by checksum", "[files]") {
  fs::path dir = temp_dir("ckpt");
  CheckpointData data;
  data.step = 42;
  data.model = {{"layers.0.weight", random_tensor({4, 3}, fresh_seed())}};
  data.optimizer = {{"exp_avg", random_tensor({12}, fresh_seed())}};
  data.info = {{"seed", 7}};
  std::string path = save_checkpoint(dir.string(), data);
  REQUIRE(path == (dir / "step_00000042").string());
  REQUIRE(!fs::exists(dir / ".step_00000042.tmp"));
  nlohmann::json manifest = verify_checkpoint(path);
  REQUIRE(manifest["step"] == 42);
  REQUIRE(manifest["seed"] == 7);
  SafetensorsFile model = read_safetensors(path + "/model.safetensors");
  REQUIRE(model.tensors.at("layers.0.weight").to_vector() == data.model[0].tensor.to_vector());

  // Flip one byte of the weights: verification must notice.
  std::string bytes = read_bytes(fs::path(path) / "model.safetensors");
  bytes[bytes.size() - 1] ^= 0x55;
  write_bytes(fs::path(path) / "model.safetensors", bytes);
  REQUIRE_THROWS_AS(verify_checkpoint(path), UserError);
  fs::remove(fs::path(path) / "optimizer.safetensors");
  REQUIRE_THROWS_AS(verify_checkpoint(path), UserError);
  REQUIRE_THROWS_AS(verify_checkpoint(dir.string()), UserError);  // not a checkpoint at all
  fs::remove_all(dir);
}

namespace {

std::string be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}

void write_gz(const fs::path& p, const std::string& bytes) {
  gzFile f = gzopen(p.string().c_str(), "wb");
  REQUIRE(f != nullptr);
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
}

}  // namespace

TEST_CASE("idx files load, normalise and reject damage", "[files]") {
  fs::path dir = temp_dir("idx");
  std::string pixels = {0, 127, static_cast<char>(255), 10, 20, 30};  // 2 images of 1x3
  write_gz(dir / "img.gz", be32(0x803) + be32(2) + be32(1) + be32(3) + pixels);
  write_gz(dir / "lab.gz", be32(0x801) + be32(2) + std::string{3, 9});
  ImageDataset ds = load_idx_dataset((dir / "img.gz").string(), (dir / "lab.gz").string(), 0.5f, 0.25f);
  REQUIRE(ds.count == 2);
  REQUIRE(ds.features() == 3);
  REQUIRE(ds.labels == std::vector<int32_t>{3, 9});
  REQUIRE(std::fabs(ds.images[2] - (1.0f - 0.5f) / 0.25f) <= 1e-6f);

  write_gz(dir / "short.gz", be32(0x803) + be32(2) + be32(1) + be32(3) + "ab");
  REQUIRE_THROWS_AS(load_idx_dataset((dir / "short.gz").string(), (dir / "lab.gz").string(), 0, 1), UserError);
  write_gz(dir / "badlab.gz", be32(0x801) + be32(2) + std::string{3, 10});
  REQUIRE_THROWS_AS(load_idx_dataset((dir / "img.gz").string(), (dir / "badlab.gz").string(), 0, 1), UserError);
  write_gz(dir / "count.gz", be32(0x801) + be32(3) + std::string{1, 2, 3});
  REQUIRE_THROWS_AS(load_idx_dataset((dir / "img.gz").string(), (dir / "count.gz").string(), 0, 1), UserError);
  REQUIRE_THROWS_AS(load_idx_dataset((dir / "lab.gz").string(), (dir / "lab.gz").string(), 0, 1), UserError);
  REQUIRE_THROWS_AS(load_fashion_mnist((dir / "nowhere").string(), true), UserError);
  fs::remove_all(dir);
}

TEST_CASE("a manifest with fields of the wrong type is a clear error", "[files]") {
  fs::path dir = temp_dir("manifest");
  for (const char* text : {R"({"format": 1})", R"({"format": "tandem-checkpoint-v1", "files": {"a": {"bytes": "x"}}})",
                           R"({"format": "tandem-checkpoint-v1", "files": 7})", "[]", "not json"}) {
    INFO(text);
    std::ofstream(dir / "manifest.json") << text;
    write_bytes(dir / "a", "abc");
    REQUIRE_THROWS_AS(verify_checkpoint(dir.string()), UserError);
  }
  fs::remove_all(dir);
}
