// Core types: dtypes, devices, tensors and views, errors.
#include "runtime/core/allocator.h"
#include "runtime/core/tensor.h"
#include "support/testing.h"

using namespace tandem;

TEST_CASE("dtype names, sizes and parsing", "[core]") {
  REQUIRE(dtype_size(DType::f32) == 4);
  REQUIRE(dtype_size(DType::bf16) == 2);
  REQUIRE(dtype_size(DType::f16) == 2);
  REQUIRE(dtype_size(DType::i32) == 4);
  REQUIRE(dtype_size(DType::u16) == 2);
  for (DType d : {DType::f32, DType::bf16, DType::f16, DType::i32, DType::u16}) {
    REQUIRE(parse_dtype(dtype_name(d)) == d);
    REQUIRE(parse_dtype(safetensors_name(d)) == d);
  }
  REQUIRE_THROWS_AS(parse_dtype("float128"), UserError);
}

TEST_CASE("bf16 rounding is round-to-nearest-even", "[core]") {
  REQUIRE(f32_to_bf16(1.0f) == 0x3f80);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to even.
  REQUIRE(f32_to_bf16(1.0f + 1.0f / 256) == 0x3f80);
  REQUIRE(f32_to_bf16(1.0f + 3.0f / 256) == 0x3f82);
  REQUIRE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  REQUIRE(bf16_to_f32(f32_to_bf16(INFINITY)) == INFINITY);
  REQUIRE(bf16_to_f32(f32_to_bf16(-2.5f)) == -2.5f);
}

TEST_CASE("devices parse and print", "[core]") {
  REQUIRE(parse_device("cpu") == Device::cpu());
  REQUIRE(parse_device("cuda") == Device::cuda(0));
  REQUIRE(parse_device("cuda:3") == Device::cuda(3));
  REQUIRE(Device::cuda(2).str() == "cuda:2");
  REQUIRE_THROWS_AS(parse_device("gpu"), UserError);
  REQUIRE_THROWS_AS(parse_device("cuda:x"), UserError);
  REQUIRE_THROWS_AS(parse_device("cuda:-1"), UserError);
}

TEST_CASE("tensor views share storage and check bounds", "[core]") {
  Tensor t = Tensor::from_vector({0, 1, 2, 3, 4, 5}, {2, 3});
  REQUIRE(t.numel() == 6);
  REQUIRE(t.nbytes() == 24);
  REQUIRE(t.dim(-1) == 3);
  Tensor v = t.view(2, {2, 2});
  REQUIRE(v.to_vector() == std::vector<float>{2, 3, 4, 5});
  v.data_as<float>()[0] = 42;
  REQUIRE(t.to_vector()[2] == 42);  // a view, not a copy
  REQUIRE(t.slice_rows(1, 2).to_vector() == std::vector<float>{3, 4, 5});
  REQUIRE(t.reshape({3, 2}).dim(0) == 3);
  REQUIRE_THROWS_AS(t.view(5, {2}), Error);
  REQUIRE_THROWS_AS(t.reshape({4}), Error);
  REQUIRE_THROWS_AS(t.data_as<int32_t>(), Error);
}

TEST_CASE("tensor copies and zeroing on the CPU", "[core]") {
  Tensor a = Tensor::from_vector({1, 2, 3}, {3});
  Tensor b = Tensor::empty({3}, DType::f32, Device::cpu());
  b.copy_from(a);
  REQUIRE(b.to_vector() == a.to_vector());
  b.zero();
  REQUIRE(b.to_vector() == std::vector<float>{0, 0, 0});
  REQUIRE(Tensor::zeros({0}, DType::f32, Device::cpu()).numel() == 0);
}

TEST_CASE("errors carry the call, file:line and rank", "[core]") {
  set_rank(3);
  try {
    TANDEM_CHECK(1 + 1 == 3, "arithmetic");
    FAIL("no throw");
  } catch (const Error& e) {
    REQUIRE(e.rank() == 3);
    REQUIRE(e.line() > 0);
    REQUIRE(std::string(e.what()).find("arithmetic") != std::string::npos);
    REQUIRE(std::string(e.what()).find("rank 3") != std::string::npos);
    REQUIRE(e.call() == "1 + 1 == 3");
  }
  try {
    throw_library_error("CUDA", 2, "out of memory", "cudaMalloc(&p, n)", "x.cu", 7);
  } catch (const LibraryError& e) {
    REQUIRE(e.library() == "CUDA");
    REQUIRE(e.code() == 2);
    REQUIRE(std::string(e.what()).find("x.cu:7") != std::string::npos);
  }
  set_rank(-1);
}

TEST_CASE("allocation sizes round into bins", "[core]") {
  REQUIRE(allocation_size(1) == 512);
  REQUIRE(allocation_size(512) == 512);
  REQUIRE(allocation_size(513) == 1024);
  REQUIRE(allocation_size(3 << 20) == 4 << 20);
}
