// llm.c token files, the token loader (Note [Token batches and ranks] in
// runtime/token_loader.h) and the byte tokenizer. Shards hold known
// sequences (base + 0, 1, 2, ...), so every batch can be checked by value.
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <numeric>

#include "runtime/byte_tokenizer.h"
#include "runtime/core/error.h"
#include "runtime/token_file.h"
#include "runtime/token_loader.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
namespace fs = std::filesystem;

namespace {

// base, base + 1, ..., base + n - 1
std::vector<uint16_t> iota_tokens(int64_t n, uint16_t base = 0) {
  std::vector<uint16_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), base);
  return v;
}

// Writes shard i with counts[i] tokens, starting at value 1000 * i.
std::vector<std::string> write_shards(const fs::path& dir, const std::vector<int64_t>& counts) {
  std::vector<std::string> paths;
  for (size_t i = 0; i < counts.size(); i++) {
    paths.push_back((dir / fmt::format("shard_{:02d}.bin", i)).string());
    write_token_file(paths.back(), iota_tokens(counts[i], static_cast<uint16_t>(1000 * i)));
  }
  return paths;
}

// The message of the UserError `f` throws; fails when it throws nothing.
template <typename F>
std::string user_error(F&& f) {
  try {
    f();
  } catch (const UserError& e) {
    return e.what();
  }
  FAIL("no UserError was thrown");
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

struct Batch {
  std::vector<int32_t> inputs, targets;
  bool operator==(const Batch&) const = default;
};

Batch next_batch(TokenLoader& loader) {
  int64_t n = loader.batch_size() * loader.seq_len();
  Batch b{std::vector<int32_t>(n), std::vector<int32_t>(n)};
  loader.next(b.inputs.data(), b.targets.data());
  return b;
}

std::vector<Batch> next_batches(TokenLoader& loader, int64_t count) {
  std::vector<Batch> out;
  for (int64_t i = 0; i < count; i++) out.push_back(next_batch(loader));
  return out;
}

// [first, first + n)
std::vector<int32_t> range(int32_t first, int32_t n) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

}  // namespace

TEST_CASE("token files round-trip in llm.c's layout", "[token_data]") {
  fs::path dir = temp_dir("tokfile");
  std::vector<uint16_t> tokens = {0, 1, 255, 256, 50256, 65535};
  std::string path = (dir / "t.bin").string();
  write_token_file(path, tokens);
  REQUIRE(read_token_file(path) == tokens);
  REQUIRE(!fs::exists(path + ".tmp"));

  // The bytes themselves: 256 little-endian int32, then little-endian uint16.
  std::string bytes = read_bytes(path);
  REQUIRE(bytes.size() == 1024 + 2 * tokens.size());
  REQUIRE(bytes.substr(0, 12) == std::string("\x88\xd8\x34\x01\x01\x00\x00\x00\x06\x00\x00\x00", 12));
  REQUIRE(bytes.substr(12, 1012) == std::string(1012, '\0'));
  REQUIRE(bytes.substr(1024 + 2 * 4, 2) == std::string("\x50\xc4", 2));  // 50256 = 0xc450

  TokenFileHeader h = read_token_header(path);
  REQUIRE(h.magic == 20240520);
  REQUIRE(h.version == 1);
  REQUIRE(h.count == 6);

  write_token_file(path, {});  // replaces the file; an empty one is valid
  REQUIRE(read_token_file(path).empty());
  fs::remove_all(dir);
}

TEST_CASE("malformed token files throw a UserError naming the file and the problem", "[token_data]") {
  fs::path dir = temp_dir("tokbad");
  std::string good_path = (dir / "good.bin").string();
  write_token_file(good_path, iota_tokens(10));
  std::string good = read_bytes(good_path);
  std::string path = (dir / "bad.bin").string();
  auto rejected = [&](const std::string& bytes) {
    write_bytes(path, bytes);
    std::string message = user_error([&] { read_token_file(path); });
    INFO(message);
    REQUIRE(contains(message, path));
    REQUIRE(user_error([&] { read_token_header(path); }) == message);
    return message;
  };
  auto with_int = [&](int at, uint32_t v) {
    std::string b = good;
    for (int i = 0; i < 4; i++) b[4 * at + i] = static_cast<char>(v >> (8 * i));
    return b;
  };

  REQUIRE(contains(user_error([&] { read_token_file((dir / "missing.bin").string()); }), "missing.bin"));
  REQUIRE(contains(rejected(""), "too short"));
  REQUIRE(contains(rejected(good.substr(0, 1000)), "1000 bytes"));
  REQUIRE(contains(rejected(with_int(0, 12345)), "magic 12345, expected 20240520"));
  REQUIRE(contains(rejected(with_int(1, 2)), "version 2"));
  REQUIRE(contains(rejected(with_int(2, 11)), "says 11 tokens (22 bytes after the header) but the file has 20"));
  REQUIRE(contains(rejected(good.substr(0, good.size() - 1)), "file has 19 bytes"));
  REQUIRE(contains(rejected(good + "xy"), "file has 22 bytes"));
  REQUIRE(contains(rejected(with_int(2, 0xffffffffu)), "-1 tokens"));
  fs::remove_all(dir);
}

TEST_CASE("a batch is B*T+1 consecutive tokens: inputs, and targets shifted by one", "[token_data]") {
  fs::path dir = temp_dir("tokbatch");
  auto shards = write_shards(dir, {100});
  TokenLoader loader(shards, {.batch_size = 2, .seq_len = 4});
  REQUIRE(loader.num_batches() == 12);  // (100 - 1) / 8
  for (int32_t k = 0; k < 12; k++) {
    Batch b = next_batch(loader);
    REQUIRE(b.inputs == range(8 * k, 8));
    REQUIRE(b.targets == range(8 * k + 1, 8));
  }
  REQUIRE(loader.state() == TokenLoaderState{0, 0});  // one pass ends where it began
  REQUIRE(next_batch(loader).inputs == range(0, 8));

  // The last token of a batch is read only as a target: 9 tokens make one batch of 8.
  auto exact = write_shards(temp_dir("tokexact"), {9});
  TokenLoader tight(exact, {.batch_size = 1, .seq_len = 8});
  REQUIRE(tight.num_batches() == 1);
  REQUIRE(next_batch(tight).targets == range(1, 8));
  fs::remove_all(dir);
  fs::remove_all(fs::path(exact[0]).parent_path());
}

// What holds (Note [Token batches and ranks]): at every step, rank r of W
// (batch B) reads exactly rows [r*B, (r+1)*B) of what one rank of world 1
// with batch W*B reads at that step, inputs and targets alike, through
// shard changes and wrap-around; so no two ranks read the same input token.
TEST_CASE("W ranks of batch B read disjoint slices of what one rank of batch W*B reads", "[token_data]") {
  fs::path dir = temp_dir("tokranks");
  auto shards = write_shards(dir, {103, 61, 250});
  const int64_t B = 2, T = 5;
  for (int world : {1, 2, 3}) {
    INFO("world " << world);
    TokenLoader single(shards, {.batch_size = B * world, .seq_len = T});
    std::vector<TokenLoader> ranks;
    for (int r = 0; r < world; r++)
      ranks.emplace_back(shards, TokenLoaderOptions{.batch_size = B, .seq_len = T, .rank = r, .world_size = world});
    REQUIRE(ranks[0].num_batches() == single.num_batches());
    for (int64_t step = 0; step < 2 * single.num_batches() + 1; step++) {  // two passes and a bit
      INFO("step " << step);
      Batch whole = next_batch(single);
      Batch joined;
      for (auto& rank : ranks) {
        Batch b = next_batch(rank);
        joined.inputs.insert(joined.inputs.end(), b.inputs.begin(), b.inputs.end());
        joined.targets.insert(joined.targets.end(), b.targets.begin(), b.targets.end());
      }
      REQUIRE(joined == whole);
      // Within a shard tokens are distinct values, so equal values would mean overlap.
      std::vector<int32_t> sorted = joined.inputs;
      std::sort(sorted.begin(), sorted.end());
      REQUIRE(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());
      for (auto& rank : ranks) REQUIRE(rank.state() == single.state());
    }
  }
  fs::remove_all(dir);
}

TEST_CASE("the loader moves to the next shard, and to the first after the last", "[token_data]") {
  fs::path dir = temp_dir("tokshards");
  auto shards = write_shards(dir, {13, 9});  // 3 and 2 batches of 4 (+1) tokens at world 1
  TokenLoader one(shards, {.batch_size = 1, .seq_len = 4});
  REQUIRE(one.num_batches() == 5);
  std::vector<int32_t> firsts;
  for (const Batch& b : next_batches(one, 7)) firsts.push_back(b.inputs[0]);
  REQUIRE(firsts == std::vector<int32_t>{0, 4, 8, 1000, 1004, 0, 4});

  // World 2: a global batch is 9 tokens, so 1 per shard; rank 1 reads at offset 4.
  TokenLoader rank1(shards, {.batch_size = 1, .seq_len = 4, .rank = 1, .world_size = 2});
  REQUIRE(rank1.num_batches() == 2);
  std::vector<Batch> got = next_batches(rank1, 3);
  REQUIRE(got[0].inputs == range(4, 4));
  REQUIRE(got[0].targets == range(5, 4));
  REQUIRE(got[1].inputs == range(1004, 4));
  REQUIRE(got[1].targets == range(1005, 4));
  REQUIRE(got[2] == got[0]);
  fs::remove_all(dir);
}

TEST_CASE("state() and restore() continue identically, on any rank; reset() starts over", "[token_data]") {
  fs::path dir = temp_dir("tokstate");
  auto shards = write_shards(dir, {50, 37, 80});
  TokenLoaderOptions rank0{.batch_size = 2, .seq_len = 3, .rank = 0, .world_size = 2};
  TokenLoaderOptions rank1 = rank0;
  rank1.rank = 1;
  for (int64_t skip : {0, 1, 3, 4, 7, 11}) {
    INFO("after " << skip << " batches");
    TokenLoader a(shards, rank0), b(shards, rank1);
    next_batches(a, skip);
    next_batches(b, skip);
    TokenLoaderState saved = a.state();
    REQUIRE(b.state() == saved);  // the cursor is the same on every rank
    std::vector<Batch> want0 = next_batches(a, 10), want1 = next_batches(b, 10);

    TokenLoader fresh0(shards, rank0), fresh1(shards, rank1);
    fresh0.restore(saved);
    fresh1.restore(saved);
    REQUIRE(next_batches(fresh0, 10) == want0);
    REQUIRE(next_batches(fresh1, 10) == want1);

    a.reset();
    TokenLoader start(shards, rank0);
    REQUIRE(next_batches(a, 5) == next_batches(start, 5));
  }

  TokenLoader loader(shards, rank0);
  REQUIRE(contains(user_error([&] { loader.restore({3, 0}); }), "shard 3"));
  REQUIRE(contains(user_error([&] { loader.restore({1, 38}); }), "position 38"));
  REQUIRE_THROWS_AS(loader.restore({-1, 0}), UserError);
  // A cursor past the shard's last global batch (another world size) moves on to the next shard.
  loader.restore({1, 37});
  REQUIRE(loader.state() == TokenLoaderState{2, 0});
  fs::remove_all(dir);
}

TEST_CASE("seek(k) gives batch k of what next() reads from the start, across passes", "[token_data]") {
  fs::path dir = temp_dir("tokseek");
  auto shards = write_shards(dir, {50, 37, 80});
  for (int rank : {0, 1}) {
    TokenLoaderOptions options{.batch_size = 2, .seq_len = 3, .rank = rank, .world_size = 2};
    TokenLoader sequential(shards, options), seeking(shards, options);
    int64_t n = sequential.num_batches();
    REQUIRE(n == 13);  // 4 + 3 + 6 global batches of 12 (+1) tokens
    for (int64_t k = 0; k < 2 * n + 3; k++) {
      INFO("rank " << rank << ", batch " << k);
      Batch want = next_batch(sequential);
      seeking.seek(k);
      REQUIRE(next_batch(seeking) == want);
      REQUIRE(seeking.state() == sequential.state());
    }
  }
  fs::remove_all(dir);
}

TEST_CASE("shards are found by a glob pattern, in sorted order", "[token_data]") {
  fs::path dir = temp_dir("tokglob");
  for (const char* name : {"fortunes_train_002.bin", "fortunes_train_000.bin", "fortunes_train_001.bin",
                           "fortunes_val_000.bin"})
    write_token_file((dir / name).string(), iota_tokens(20));
  std::vector<std::string> got = expand_token_shards((dir / "fortunes_train*.bin").string());
  REQUIRE(got == std::vector<std::string>{(dir / "fortunes_train_000.bin").string(),
                                          (dir / "fortunes_train_001.bin").string(),
                                          (dir / "fortunes_train_002.bin").string()});
  TokenLoader loader(got, {.batch_size = 1, .seq_len = 4});
  REQUIRE(loader.num_batches() == 12);
  std::string pattern = (dir / "nothing*.bin").string();
  REQUIRE(contains(user_error([&] { expand_token_shards(pattern); }), pattern));
  fs::remove_all(dir);
}

TEST_CASE("a shard too small for one global batch, or a bad shape, is a clear error", "[token_data]") {
  fs::path dir = temp_dir("toksmall");
  auto shards = write_shards(dir, {100, 16});
  std::string message = user_error([&] {
    TokenLoader(shards, {.batch_size = 2, .seq_len = 4, .rank = 0, .world_size = 2});
  });
  INFO(message);
  REQUIRE(contains(message, shards[1]));
  REQUIRE(contains(message, "has 16 tokens"));
  REQUIRE(contains(message, "= 17 tokens"));
  REQUIRE_NOTHROW(TokenLoader(shards, {.batch_size = 3, .seq_len = 5}));  // 16 = 15 + 1: just fits
  REQUIRE_THROWS_AS(TokenLoader(shards, {.batch_size = 0, .seq_len = 4}), UserError);
  REQUIRE_THROWS_AS(TokenLoader(shards, {.batch_size = 1, .seq_len = -1}), UserError);
  REQUIRE_THROWS_AS(TokenLoader({}, {.batch_size = 1, .seq_len = 1}), UserError);
  REQUIRE(contains(user_error([&] { TokenLoader({(dir / "gone.bin").string()}, {.batch_size = 1, .seq_len = 1}); }),
                   "gone.bin"));
  fs::remove_all(dir);
}

TEST_CASE("the byte tokenizer maps each byte to one token and back", "[token_data]") {
  std::string all(256, '\0');
  for (int i = 0; i < 256; i++) all[i] = static_cast<char>(i);
  std::vector<uint16_t> tokens = byte_encode(all);
  REQUIRE(tokens == iota_tokens(256));
  REQUIRE(byte_decode(tokens) == all);
  REQUIRE(byte_decode(std::vector<int32_t>{104, 105, 10}) == "hi\n");
  REQUIRE(byte_encode("").empty());
  REQUIRE(contains(user_error([] { byte_decode(std::vector<int32_t>{65, 256}); }), "token 256 at index 1"));
  REQUIRE_THROWS_AS(byte_decode(std::vector<int32_t>{-1}), UserError);
}
