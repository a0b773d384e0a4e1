// CUDA conv2d through cuDNN's classic convolution API: f32, bf16 and f16
// storage, fp32 compute. The bias and its gradient are two small kernels of
// our own (fixed-order sums, so dbias is bitwise repeatable). See
// kernels/conv2d.h for the semantics; cuDNN is loaded at run time (Note
// [cuDNN is loaded lazily] in kernels/cuda/cudnn_library.h).
//
// Note [conv2d plans]: each (device, dtype, shape) gets one Plan: the
// tensor, filter and convolution descriptors, and for each direction
// (forward, backward data, backward filter) the algorithm that cuDNN's
// heuristic (cudnnGet*Algorithm_v7) ranks first among those that
//   - run for this shape (status success) within kMaxWorkspaceBytes;
//   - are deterministic (CUDNN_DETERMINISTIC), so that training stays
//     bitwise reproducible (backward filter/data algorithms that use atomics
//     are not);
//   - for f32, use no tensor cores: TF32 would give up the fp32 accuracy
//     the CPU twin sets. f32 descriptors ask for CUDNN_FMA_MATH; bf16 and
//     f16 ask for CUDNN_TENSOR_OP_MATH and take the math type the chosen
//     algorithm reports, as cuDNN's documentation asks.
// A heuristic, unlike Find*'s timing runs, gives the same answer on every
// run and every rank (same GPU and cuDNN), allocates nothing and launches
// nothing. Each direction keeps its own convolution descriptor, because
// the math type lives there. Plans are made on first use (usually by
// conv2d_workspace_bytes, when the caller sizes its workspace) and kept for
// the life of the process; they are never written after that, so threads
// share them under one lock that only guards the map.
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/conv2d.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cudnn_library.h"

namespace tandem::kernels::cuda {

namespace {

// The most workspace one direction may ask for: algorithms that want more
// (some FFT ones want gigabytes) are passed over, so that one layer's
// scratch cannot crowd out the activations.
constexpr size_t kMaxWorkspaceBytes = size_t{256} << 20;

enum Direction { kForward, kBackwardData, kBackwardFilter, kDirections };
const char* const kDirectionNames[kDirections] = {"forward", "backward_data", "backward_filter"};

// ---- The bias and its gradient, for every storage type

__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ float load(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float load(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T store(float x);
template <> __device__ __forceinline__ float store<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 store<bf16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half store<__half>(float x) { return __float2half_rn(x); }

// out (N, K, PQ) += bias[k] on every plane k.
template <typename T>
__global__ void add_bias_kernel(T* out, const T* bias, int64_t n, int64_t K, int64_t PQ) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = store<T>(load(out[i]) + load(bias[(i / PQ) % K]));
}

// dbias[k] += dout (N, K, PQ) summed over N and PQ: one block per channel,
// each thread strides over the channel's N * PQ values, then block_sum. The
// order of additions is fixed, so the result is bitwise repeatable.
template <typename T>
__global__ void bias_grad_kernel(T* dbias, const T* dout, int64_t N, int64_t K, int64_t PQ) {
  const int64_t k = blockIdx.x, count = N * PQ;
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    const int64_t n = i / PQ, j = i - n * PQ;
    sum += load(dout[(n * K + k) * PQ + j]);
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) dbias[k] = store<T>(load(dbias[k]) + sum);
}

template <typename T> struct Tag { using type = T; };

// Calls f(Tag<T>{}) with T the storage type of `dtype`.
template <typename F>
void with_storage_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: return f(Tag<float>{});
    case DType::bf16: return f(Tag<bf16>{});
    case DType::f16: return f(Tag<__half>{});
    default: TANDEM_CHECK(false, std::string("conv2d: unsupported dtype ") + dtype_name(dtype));
  }
}

// ---- Plans (Note [conv2d plans])

struct Key {
  int device;
  DType dtype;
  int64_t N, C, H, W, K, R, S, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  auto operator<=>(const Key&) const = default;
};

struct Plan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;  // inp / dinp (N, C, H, W), out / dout (N, K, P, Q)
  cudnnFilterDescriptor_t w = nullptr;               // weight / dweight (K, C, R, S)
  cudnnConvolutionDescriptor_t conv[kDirections] = {};
  cudnnConvolutionFwdAlgo_t forward{};
  cudnnConvolutionBwdDataAlgo_t backward_data{};
  cudnnConvolutionBwdFilterAlgo_t backward_filter{};
  size_t bytes[kDirections] = {};  // workspace of each direction's algorithm

  size_t workspace_bytes() const { return *std::max_element(bytes, bytes + kDirections); }

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {  // runs only when making the plan failed; statuses ignored (host-side descriptors)
    const CudnnApi& api = cudnn();
    for (cudnnConvolutionDescriptor_t c : conv)
      if (c) api.cudnnDestroyConvolutionDescriptor(c);
    if (w) api.cudnnDestroyFilterDescriptor(w);
    if (y) api.cudnnDestroyTensorDescriptor(y);
    if (x) api.cudnnDestroyTensorDescriptor(x);
  }
};

// cuDNN's 4-D descriptors take int sizes and int strides: every size, and
// every tensor's element count, must fit.
void check_fits_int(const Conv2dShape& s) {
  const int64_t largest = std::max({s.N * s.C * s.H * s.W, s.N * s.K * s.P() * s.Q(), s.K * s.C * s.R * s.S,
                                    s.pad_h, s.pad_w, s.stride_h, s.stride_w, s.dilation_h, s.dilation_w});
  if (largest > INT_MAX)
    throw UserError("conv2d on CUDA: a tensor of 2^31 elements or more is beyond cuDNN's 4-D descriptors (" +
                    s.str() + ")");
}

// The first of cuDNN's ranked algorithms that Note [conv2d plans] allows.
template <typename Perf>
Perf pick(const std::vector<Perf>& ranked, int count, DType dtype, Direction d, const Conv2dShape& s) {
  for (int i = 0; i < count; i++) {
    const Perf& p = ranked[i];
    const bool tensor_cores = p.mathType == CUDNN_TENSOR_OP_MATH || p.mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
    if (p.status == CUDNN_STATUS_SUCCESS && p.determinism == CUDNN_DETERMINISTIC && p.memory <= kMaxWorkspaceBytes &&
        !(dtype == DType::f32 && tensor_cores))
      return p;
  }
  throw UserError("conv2d on CUDA: cuDNN " + std::to_string(cudnn().version) + " offers no deterministic " +
                  kDirectionNames[d] + " algorithm within " + std::to_string(kMaxWorkspaceBytes >> 20) +
                  " MiB of workspace for " + dtype_name(dtype) + " (" + s.str() + ")");
}

// After the pick: the descriptor runs with the algorithm's math type (f32
// stays on FMA whatever the heuristic reported).
void set_math(cudnnConvolutionDescriptor_t conv, DType dtype, cudnnMathType_t chosen) {
  CUDNN_CALL(cudnnSetConvolutionMathType, conv, dtype == DType::f32 ? CUDNN_FMA_MATH : chosen);
}

void choose_forward(Plan& p, cudnnHandle_t h, DType dtype, const Conv2dShape& s) {
  int max = 0, count = 0;
  CUDNN_CALL(cudnnGetConvolutionForwardAlgorithmMaxCount, h, &max);
  std::vector<cudnnConvolutionFwdAlgoPerf_t> ranked(max);
  CUDNN_CALL(cudnnGetConvolutionForwardAlgorithm_v7, h, p.x, p.w, p.conv[kForward], p.y, max, &count, ranked.data());
  auto best = pick(ranked, count, dtype, kForward, s);
  p.forward = best.algo;
  set_math(p.conv[kForward], dtype, best.mathType);
  CUDNN_CALL(cudnnGetConvolutionForwardWorkspaceSize, h, p.x, p.w, p.conv[kForward], p.y, p.forward,
             &p.bytes[kForward]);
}

void choose_backward_data(Plan& p, cudnnHandle_t h, DType dtype, const Conv2dShape& s) {
  int max = 0, count = 0;
  CUDNN_CALL(cudnnGetConvolutionBackwardDataAlgorithmMaxCount, h, &max);
  std::vector<cudnnConvolutionBwdDataAlgoPerf_t> ranked(max);
  CUDNN_CALL(cudnnGetConvolutionBackwardDataAlgorithm_v7, h, p.w, p.y, p.conv[kBackwardData], p.x, max, &count,
             ranked.data());
  auto best = pick(ranked, count, dtype, kBackwardData, s);
  p.backward_data = best.algo;
  set_math(p.conv[kBackwardData], dtype, best.mathType);
  CUDNN_CALL(cudnnGetConvolutionBackwardDataWorkspaceSize, h, p.w, p.y, p.conv[kBackwardData], p.x, p.backward_data,
             &p.bytes[kBackwardData]);
}

void choose_backward_filter(Plan& p, cudnnHandle_t h, DType dtype, const Conv2dShape& s) {
  int max = 0, count = 0;
  CUDNN_CALL(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount, h, &max);
  std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> ranked(max);
  CUDNN_CALL(cudnnGetConvolutionBackwardFilterAlgorithm_v7, h, p.x, p.y, p.conv[kBackwardFilter], p.w, max, &count,
             ranked.data());
  auto best = pick(ranked, count, dtype, kBackwardFilter, s);
  p.backward_filter = best.algo;
  set_math(p.conv[kBackwardFilter], dtype, best.mathType);
  CUDNN_CALL(cudnnGetConvolutionBackwardFilterWorkspaceSize, h, p.x, p.y, p.conv[kBackwardFilter], p.w,
             p.backward_filter, &p.bytes[kBackwardFilter]);
}

std::unique_ptr<Plan> make_plan(const Conv2dShape& s, DType dtype, int device) {
  check_fits_int(s);
  const cudnnDataType_t type = cudnn_data_type(dtype, "conv2d");
  auto i = [](int64_t v) { return static_cast<int>(v); };
  auto p = std::make_unique<Plan>();
  CUDNN_CALL(cudnnCreateTensorDescriptor, &p->x);
  CUDNN_CALL(cudnnSetTensor4dDescriptor, p->x, CUDNN_TENSOR_NCHW, type, i(s.N), i(s.C), i(s.H), i(s.W));
  CUDNN_CALL(cudnnCreateTensorDescriptor, &p->y);
  CUDNN_CALL(cudnnSetTensor4dDescriptor, p->y, CUDNN_TENSOR_NCHW, type, i(s.N), i(s.K), i(s.P()), i(s.Q()));
  CUDNN_CALL(cudnnCreateFilterDescriptor, &p->w);
  CUDNN_CALL(cudnnSetFilter4dDescriptor, p->w, type, CUDNN_TENSOR_NCHW, i(s.K), i(s.C), i(s.R), i(s.S));
  const cudnnMathType_t wanted = dtype == DType::f32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH;
  for (cudnnConvolutionDescriptor_t& conv : p->conv) {
    CUDNN_CALL(cudnnCreateConvolutionDescriptor, &conv);
    // Cross-correlation, as every framework computes it; fp32 compute for every storage type.
    CUDNN_CALL(cudnnSetConvolution2dDescriptor, conv, i(s.pad_h), i(s.pad_w), i(s.stride_h), i(s.stride_w),
               i(s.dilation_h), i(s.dilation_w), CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT);
    CUDNN_CALL(cudnnSetConvolutionMathType, conv, wanted);
  }
  int out_n = 0, out_k = 0, out_h = 0, out_w = 0;
  CUDNN_CALL(cudnnGetConvolution2dForwardOutputDim, p->conv[kForward], p->x, p->w, &out_n, &out_k, &out_h, &out_w);
  TANDEM_CHECK(out_n == s.N && out_k == s.K && out_h == s.P() && out_w == s.Q(),
               "conv2d: cuDNN's output size differs from Conv2dShape's (" + s.str() + ")");

  cudnnHandle_t h = cudnn_handle(device, nullptr);
  choose_forward(*p, h, dtype, s);
  choose_backward_data(*p, h, dtype, s);
  choose_backward_filter(*p, h, dtype, s);
  return p;
}

const Plan& plan_for(const Conv2dShape& s, DType dtype, int device) {
  static std::mutex mutex;
  // Never destroyed: plans live as long as the process (Note [conv2d plans]).
  static auto* plans = new std::map<Key, std::unique_ptr<Plan>>();
  const Key key{device, dtype, s.N, s.C, s.H, s.W, s.K, s.R, s.S,
                s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dilation_h, s.dilation_w};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = plans->find(key);
  if (it == plans->end()) it = plans->emplace(key, make_plan(s, dtype, device)).first;
  return *it->second;
}

}  // namespace

int64_t conv2d_workspace_bytes(const Conv2dShape& s, DType dtype, int device) {
  return static_cast<int64_t>(plan_for(s, dtype, device).workspace_bytes());
}

void conv2d_forward(void* out, const void* inp, const void* weight, const void* bias, const Conv2dShape& s,
                    DType dtype, void* workspace, int device, cudaStream_t stream) {
  const Plan& p = plan_for(s, dtype, device);
  const float one = 1.f, zero = 0.f;  // beta 0: out is overwritten, never read
  CUDNN_CALL(cudnnConvolutionForward, cudnn_handle(device, stream), &one, p.x, inp, p.w, weight, p.conv[kForward],
             p.forward, workspace, p.bytes[kForward], &zero, p.y, out);
  if (!bias) return;
  const int64_t n = s.N * s.K * s.P() * s.Q();
  with_storage_type(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    add_bias_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(static_cast<T*>(out), static_cast<const T*>(bias), n, s.K,
                                                            s.P() * s.Q());
  });
  CUDA_CHECK_LAUNCH();
}

void conv2d_backward_data(void* dinp, const void* dout, const void* weight, const Conv2dShape& s, DType dtype,
                          void* workspace, int device, cudaStream_t stream) {
  const Plan& p = plan_for(s, dtype, device);
  const float one = 1.f, zero = 0.f;  // beta 0: dinp is overwritten, never read
  CUDNN_CALL(cudnnConvolutionBackwardData, cudnn_handle(device, stream), &one, p.w, weight, p.y, dout,
             p.conv[kBackwardData], p.backward_data, workspace, p.bytes[kBackwardData], &zero, p.x, dinp);
}

void conv2d_backward_filter(void* dweight, void* dbias, const void* dout, const void* inp, const Conv2dShape& s,
                            DType dtype, void* workspace, int device, cudaStream_t stream) {
  const Plan& p = plan_for(s, dtype, device);
  const float one = 1.f;  // beta 1: dweight accumulates (Note [Gradient writes])
  CUDNN_CALL(cudnnConvolutionBackwardFilter, cudnn_handle(device, stream), &one, p.x, inp, p.y, dout,
             p.conv[kBackwardFilter], p.backward_filter, workspace, p.bytes[kBackwardFilter], &one, p.w, dweight);
  if (!dbias) return;
  with_storage_type(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    bias_grad_kernel<T><<<static_cast<unsigned int>(s.K), kBlock, 0, stream>>>(
        static_cast<T*>(dbias), static_cast<const T*>(dout), s.N, s.K, s.P() * s.Q());
  });
  CUDA_CHECK_LAUNCH();
}

}  // namespace tandem::kernels::cuda
