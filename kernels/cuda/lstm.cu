// CUDA lstm through cuDNN's RNN API (cudnnRNNForward, cudnnRNNBackwardData_v8,
// cudnnRNNBackwardWeights_v8): one unidirectional LSTM layer with two bias
// vectors, as nn.LSTM. f32 and f16 storage with fp32 math; bf16 where the
// loaded cuDNN supports it (9.13 and later). See kernels/lstm.h for the
// semantics; cuDNN is loaded at run time (Note [cuDNN is loaded lazily] in
// kernels/cuda/cudnn_library.h).
//
// Note [LSTM plans]: each (device, dtype, shape) gets one Plan, made on
// first use and kept for the life of the process: the RNN descriptor, a
// dropout descriptor with no dropout (one layer has none to apply), the
// RNN data descriptors of x (T, N, I) and y (T, N, H), the (1, N, H)
// descriptor of the states, the N sequence lengths (all T) in device memory
// (cuDNN reads them asynchronously; allocated once, with the plan), and the
// sizes of cuDNN's workspace, reserve and weight space. Every sequence is T
// long, so cuDNN's SEQ_MAJOR_PACKED layout is our (T, N, .) layout byte for
// byte. f32 runs with CUDNN_FMA_MATH: no TF32, so it matches the CPU twin to
// fp32 rounding.
//
// Note [LSTM weight space]: cuDNN keeps the weights in one buffer, the
// weight space, and the gradients in another of the same layout. For gate
// linLayerID 0..3 (i, f, g, o: PyTorch's order) it holds the input matrix
// (H, I) and bias b_ih (H); for 4..7 the recurrent matrix (H, H) and bias
// b_hh (H), row-major: row block g of w_ih (4H, I) is gate g's matrix, and
// so on. cudnnGetRNNWeightParams says where each one starts; the plan turns
// that into a list of D2D copies (merged where both sides are contiguous,
// which cuDNN 9's layout makes them: usually one copy per tensor). Forward
// copies our four tensors in; backward copies our four gradients into the
// gradient space, lets cuDNN add to them (CUDNN_WGRAD_MODE_ADD, the only
// mode it has) and copies them back: dw += grad, as Note [Gradient writes]
// asks, with one rounding in the storage type.
//
// Note [LSTM buffers on CUDA]: both caller buffers are opaque bytes here.
//   reserve   = cuDNN's reserve | weight space | c_0 (N, H)
//   workspace = cuDNN's workspace | gradient space
// Forward writes all of the reserve and backward reads it (and cuDNN's
// backward writes its own part, so one backward per forward); c_0 is kept
// because backward's API has no c0 while cuDNN's needs it. Each piece
// starts on a kAlign boundary, and the sizes include kAlign of slack for a
// caller buffer that starts off it.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cudnn_library.h"
#include "kernels/lstm.h"

namespace tandem::kernels::cuda {

namespace {

constexpr size_t kAlign = 256;          // cuDNN's strictest buffer alignment
constexpr size_t kBf16Version = 91300;  // the first cuDNN with bf16 RNNs (9.13)
constexpr int kGates = 4;               // i, f, g, o

size_t round_up(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }
char* aligned(void* p) {
  return reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(p) + kAlign - 1) / kAlign * kAlign);
}

// Our four parameter tensors, in LstmWeights' order.
enum Param { kWih, kWhh, kBih, kBhh, kParams };

// One D2D copy between a parameter tensor and the weight space.
struct Piece {
  Param param;
  int64_t elem_offset;  // into the parameter tensor
  size_t space_offset;  // bytes into the weight space
  int64_t elems;
};

struct Key {
  int device;
  DType dtype;
  int64_t T, N, I, H;
  auto operator<=>(const Key&) const = default;
};

struct Plan {
  cudnnRNNDescriptor_t rnn = nullptr;
  cudnnDropoutDescriptor_t dropout = nullptr;
  cudnnRNNDataDescriptor_t x = nullptr, y = nullptr;
  cudnnTensorDescriptor_t state = nullptr;  // h0, c0, hT, cT and their gradients: (1, N, H)
  int32_t* seq_lengths = nullptr;           // (N) on the device, all T
  size_t elem_bytes = 0;                    // of the storage type
  size_t work_bytes = 0, reserve_bytes = 0, weight_bytes = 0, state_bytes = 0;
  std::once_flag pieces_found;
  std::vector<Piece> pieces;  // Note [LSTM weight space]; found on first use
  bool pieces_fill_space = false;  // false: the space has bytes no piece covers (padding)

  // Note [LSTM buffers on CUDA]
  size_t caller_reserve_bytes() const {
    return kAlign + round_up(reserve_bytes) + round_up(weight_bytes) + state_bytes;
  }
  size_t caller_workspace_bytes() const { return kAlign + round_up(work_bytes) + weight_bytes; }
  struct Reserve {
    char *cudnn, *weights, *c0;
  };
  Reserve reserve(void* base) const {
    char* p = aligned(base);
    return {p, p + round_up(reserve_bytes), p + round_up(reserve_bytes) + round_up(weight_bytes)};
  }
  struct Workspace {
    char *cudnn, *dweights;
  };
  Workspace workspace(void* base) const {
    char* p = aligned(base);
    return {p, p + round_up(work_bytes)};
  }

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {  // runs only when making the plan failed: plans are otherwise kept
    const CudnnApi& api = cudnn();
    if (seq_lengths) cudaFree(seq_lengths);
    if (state) api.cudnnDestroyTensorDescriptor(state);
    if (y) api.cudnnDestroyRNNDataDescriptor(y);
    if (x) api.cudnnDestroyRNNDataDescriptor(x);
    if (dropout) api.cudnnDestroyDropoutDescriptor(dropout);
    if (rnn) api.cudnnDestroyRNNDescriptor(rnn);
  }
};

void check_fits_int(const LstmShape& s) {
  const int64_t largest = std::max({s.T * s.N * std::max(s.I, s.H), 4 * s.H * std::max(s.I, s.H)});
  if (largest > INT_MAX)
    throw UserError("lstm on CUDA: a tensor of 2^31 elements or more is beyond cuDNN's descriptors (" + s.str() + ")");
}

// The RNN descriptor for `dtype`: fp32 math always; f32 without tensor
// cores (no TF32), f16 and bf16 with them. bf16 needs cuDNN 9.13.
void set_rnn(Plan& p, cudnnHandle_t h, const LstmShape& s, DType dtype) {
  const cudnnDataType_t type = cudnn_data_type(dtype, "lstm");
  const size_t version = cudnn().version;
  if (dtype == DType::bf16 && version < kBf16Version)
    throw UserError("lstm on CUDA: bf16 needs cuDNN 9.13 or later, and the loaded one is " + std::to_string(version) +
                    "; use f32 or f16, or a newer cuDNN");
  CUDNN_CALL(cudnnCreateDropoutDescriptor, &p.dropout);
  // Dropout 0 needs no random states (null, 0 bytes), and it would never
  // apply anyway: cuDNN drops out between layers, and there is only one.
  CUDNN_CALL(cudnnSetDropoutDescriptor, p.dropout, h, 0.f, nullptr, 0, 0);
  CUDNN_CALL(cudnnCreateRNNDescriptor, &p.rnn);
  const cudnnMathType_t math = dtype == DType::f32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH;
  const int I = static_cast<int>(s.I), H = static_cast<int>(s.H);
  cudnnStatus_t status = cudnn().cudnnSetRNNDescriptor_v8(
      p.rnn, CUDNN_RNN_ALGO_STANDARD, CUDNN_LSTM, CUDNN_RNN_DOUBLE_BIAS, CUDNN_UNIDIRECTIONAL, CUDNN_LINEAR_INPUT, type,
      CUDNN_DATA_FLOAT, math, I, H, /*projSize=*/H, /*numLayers=*/1, p.dropout, CUDNN_RNN_PADDED_IO_DISABLED);
  if (status == CUDNN_STATUS_NOT_SUPPORTED || (dtype != DType::f32 && status == CUDNN_STATUS_BAD_PARAM))
    throw UserError(std::string("lstm on CUDA: cuDNN ") + std::to_string(version) + " has no " + dtype_name(dtype) +
                    " LSTM (" + cudnn().cudnnGetErrorString(status) + "); use f32");
  cudnn_check(status, "cudnnSetRNNDescriptor_v8", __FILE__, __LINE__);
}

std::unique_ptr<Plan> make_plan(const LstmShape& s, DType dtype, int device) {
  check_fits_int(s);
  auto p = std::make_unique<Plan>();
  cudnnHandle_t h = cudnn_handle(device, nullptr);
  set_rnn(*p, h, s, dtype);

  const cudnnDataType_t type = cudnn_data_type(dtype, "lstm");
  const int T = static_cast<int>(s.T), N = static_cast<int>(s.N);
  const std::vector<int32_t> lengths(N, T);
  CUDNN_CALL(cudnnCreateRNNDataDescriptor, &p->x);
  CUDNN_CALL(cudnnSetRNNDataDescriptor, p->x, type, CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED, T, N,
             static_cast<int>(s.I), lengths.data(), nullptr);
  CUDNN_CALL(cudnnCreateRNNDataDescriptor, &p->y);
  CUDNN_CALL(cudnnSetRNNDataDescriptor, p->y, type, CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED, T, N,
             static_cast<int>(s.H), lengths.data(), nullptr);
  const int dims[3] = {1, N, static_cast<int>(s.H)}, strides[3] = {N * dims[2], dims[2], 1};
  CUDNN_CALL(cudnnCreateTensorDescriptor, &p->state);
  CUDNN_CALL(cudnnSetTensorNdDescriptor, p->state, type, 3, dims, strides);

  CUDNN_CALL(cudnnGetRNNWeightSpaceSize, h, p->rnn, &p->weight_bytes);
  CUDNN_CALL(cudnnGetRNNTempSpaceSizes, h, p->rnn, CUDNN_FWD_MODE_TRAINING, p->x, &p->work_bytes, &p->reserve_bytes);
  p->elem_bytes = dtype_size(dtype);
  p->state_bytes = static_cast<size_t>(s.N * s.H) * p->elem_bytes;

  DeviceScope scope(device);
  CUDA_CHECK(cudaMalloc(&p->seq_lengths, lengths.size() * sizeof(int32_t)));
  CUDA_CHECK(cudaMemcpy(p->seq_lengths, lengths.data(), lengths.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  // From pageable memory cudaMemcpy may return before the DMA lands, and the
  // streams that read the lengths do not wait for the legacy stream.
  CUDA_CHECK(cudaStreamSynchronize(nullptr));
  return p;
}

Plan& plan_for(const LstmShape& s, DType dtype, int device) {
  static std::mutex mutex;
  // Never destroyed: plans live as long as the process (Note [LSTM plans]).
  static auto* plans = new std::map<Key, std::unique_ptr<Plan>>();
  const Key key{device, dtype, s.T, s.N, s.I, s.H};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = plans->find(key);
  if (it == plans->end()) it = plans->emplace(key, make_plan(s, dtype, device)).first;
  return *it->second;
}

// The number of elements a weight-params descriptor describes.
int64_t described_elems(cudnnTensorDescriptor_t desc) {
  cudnnDataType_t type{};
  int nb = 0, dims[3] = {}, strides[3] = {};
  CUDNN_CALL(cudnnGetTensorNdDescriptor, desc, 3, &type, &nb, dims, strides);
  int64_t n = 1;
  for (int d = 0; d < std::min(nb, 3); d++) n *= dims[d];
  return n;
}

// A tensor descriptor for one scope.
struct ScopedTensorDescriptor {
  cudnnTensorDescriptor_t desc = nullptr;
  ScopedTensorDescriptor() { CUDNN_CALL(cudnnCreateTensorDescriptor, &desc); }
  ~ScopedTensorDescriptor() { cudnn().cudnnDestroyTensorDescriptor(desc); }
  ScopedTensorDescriptor(const ScopedTensorDescriptor&) = delete;
  ScopedTensorDescriptor& operator=(const ScopedTensorDescriptor&) = delete;
};

// Note [LSTM weight space]: where each gate's matrix and bias live, as
// copies from/to our tensors, sorted and merged.
std::vector<Piece> find_pieces(const Plan& p, cudnnHandle_t h, const LstmShape& s, char* space) {
  ScopedTensorDescriptor matrix_desc, bias_desc;
  cudnnTensorDescriptor_t matrix = matrix_desc.desc, bias = bias_desc.desc;
  std::vector<Piece> pieces;
  for (int id = 0; id < 2 * kGates; id++) {
    const bool recurrent = id >= kGates;
    const int64_t gate = id % kGates, cols = recurrent ? s.H : s.I;
    void *m = nullptr, *b = nullptr;
    CUDNN_CALL(cudnnGetRNNWeightParams, h, p.rnn, 0, p.weight_bytes, space, id, matrix, &m, bias, &b);
    TANDEM_CHECK(m && b && described_elems(matrix) == s.H * cols && described_elems(bias) == s.H,
                 "lstm: cuDNN's weight space does not hold an (H, " + std::to_string(cols) + ") matrix and an (H) bias "
                 "for linLayerID " + std::to_string(id) + " (" + s.str() + ")");
    pieces.push_back({recurrent ? kWhh : kWih, gate * s.H * cols, static_cast<size_t>(static_cast<char*>(m) - space),
                      s.H * cols});
    pieces.push_back({recurrent ? kBhh : kBih, gate * s.H, static_cast<size_t>(static_cast<char*>(b) - space), s.H});
  }

  std::sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) {
    return a.param != b.param ? a.param < b.param : a.elem_offset < b.elem_offset;
  });
  const size_t elem = p.elem_bytes;
  std::vector<Piece> merged;
  for (const Piece& piece : pieces) {
    TANDEM_CHECK(piece.space_offset + piece.elems * elem <= p.weight_bytes,
                 "lstm: cuDNN placed a weight outside its weight space");
    Piece* last = merged.empty() ? nullptr : &merged.back();
    if (last && last->param == piece.param && last->elem_offset + last->elems == piece.elem_offset &&
        last->space_offset + last->elems * elem == piece.space_offset)
      last->elems += piece.elems;
    else
      merged.push_back(piece);
  }
  return merged;
}

const Plan& with_pieces(Plan& p, cudnnHandle_t h, const LstmShape& s, char* space) {
  std::call_once(p.pieces_found, [&] {
    p.pieces = find_pieces(p, h, s, space);
    size_t covered = 0;
    for (const Piece& piece : p.pieces) covered += piece.elems * p.elem_bytes;
    p.pieces_fill_space = covered == p.weight_bytes;
  });
  return p;
}

// Copies between our four parameter tensors and a weight space. Into a
// space with padding, the padding is zeroed first: whatever cuDNN might
// read there is then a number, not the last call's leftovers.
enum class Way { into_space, out_of_space };
void copy_pieces(const Plan& p, void* const params[kParams], char* space, Way way, cudaStream_t stream) {
  if (way == Way::into_space && !p.pieces_fill_space) CUDA_CHECK(cudaMemsetAsync(space, 0, p.weight_bytes, stream));
  const size_t elem = p.elem_bytes;
  for (const Piece& piece : p.pieces) {
    char* ours = static_cast<char*>(params[piece.param]) + piece.elem_offset * elem;
    char* theirs = space + piece.space_offset;
    const size_t bytes = piece.elems * elem;
    if (way == Way::into_space)
      CUDA_CHECK(cudaMemcpyAsync(theirs, ours, bytes, cudaMemcpyDeviceToDevice, stream));
    else
      CUDA_CHECK(cudaMemcpyAsync(ours, theirs, bytes, cudaMemcpyDeviceToDevice, stream));
  }
}

// out (B, A, C) = in (A, B, C), element by element as raw bits.
template <typename T>
__global__ void swap_leading_kernel(T* out, const T* in, int64_t A, int64_t B, int64_t C) {
  const int64_t n = A * B * C;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = i % C, row = i / C, a = row % A, b = row / A;  // out[b][a][c]
    out[i] = in[(a * B + b) * C + c];
  }
}

}  // namespace

int64_t lstm_reserve_bytes(const LstmShape& s, DType dtype, int device) {
  return static_cast<int64_t>(plan_for(s, dtype, device).caller_reserve_bytes());
}

int64_t lstm_workspace_bytes(const LstmShape& s, DType dtype, int device) {
  return static_cast<int64_t>(plan_for(s, dtype, device).caller_workspace_bytes());
}

void lstm_forward(void* y, void* hT, void* cT, void* reserve, const void* x, const void* h0, const void* c0,
                  const void* w_ih, const void* w_hh, const void* b_ih, const void* b_hh, const LstmShape& s,
                  DType dtype, void* workspace, int device, cudaStream_t stream) {
  Plan& p = plan_for(s, dtype, device);
  cudnnHandle_t h = cudnn_handle(device, stream);
  const Plan::Reserve r = p.reserve(reserve);
  void* const params[kParams] = {const_cast<void*>(w_ih), const_cast<void*>(w_hh), const_cast<void*>(b_ih),
                                 const_cast<void*>(b_hh)};  // read only: copied into the space
  copy_pieces(with_pieces(p, h, s, r.weights), params, r.weights, Way::into_space, stream);
  if (c0)
    CUDA_CHECK(cudaMemcpyAsync(r.c0, c0, p.state_bytes, cudaMemcpyDeviceToDevice, stream));
  else
    CUDA_CHECK(cudaMemsetAsync(r.c0, 0, p.state_bytes, stream));  // zero bits are 0.0 in every float type
  // h0 null: zeros; hT, cT null: not written.
  CUDNN_CALL(cudnnRNNForward, h, p.rnn, CUDNN_FWD_MODE_TRAINING, p.seq_lengths, p.x, x, p.y, y, p.state, h0, hT,
             p.state, r.c0, cT, p.weight_bytes, r.weights, p.work_bytes, p.workspace(workspace).cudnn,
             p.reserve_bytes, r.cudnn);
}

void lstm_backward(void* dx, void* dh0, void* dc0, void* dw_ih, void* dw_hh, void* db_ih, void* db_hh,
                   const void* dy, const void* dhT, const void* dcT, const void* x, const void* h0, const void* y,
                   void* reserve, const LstmShape& s, DType dtype, void* workspace, int device, cudaStream_t stream) {
  Plan& p = plan_for(s, dtype, device);
  cudnnHandle_t h = cudnn_handle(device, stream);
  const Plan::Reserve r = p.reserve(reserve);
  const Plan::Workspace w = p.workspace(workspace);
  // dhT, dcT null: zeros; dh0, dc0 null: not written. dx, dh0, dc0 are overwritten.
  CUDNN_CALL(cudnnRNNBackwardData_v8, h, p.rnn, p.seq_lengths, p.y, y, dy, p.x, dx, p.state, h0, dhT, dh0, p.state,
             r.c0, dcT, dc0, p.weight_bytes, r.weights, p.work_bytes, w.cudnn, p.reserve_bytes, r.cudnn);
  // Note [LSTM weight space]: our gradients in, cuDNN adds, ours back out.
  void* const grads[kParams] = {dw_ih, dw_hh, db_ih, db_hh};
  copy_pieces(with_pieces(p, h, s, w.dweights), grads, w.dweights, Way::into_space, stream);
  CUDNN_CALL(cudnnRNNBackwardWeights_v8, h, p.rnn, CUDNN_WGRAD_MODE_ADD, p.seq_lengths, p.x, x, p.state, h0, p.y, y,
             p.weight_bytes, w.dweights, p.work_bytes, w.cudnn, p.reserve_bytes, r.cudnn);
  copy_pieces(p, grads, w.dweights, Way::out_of_space, stream);
}

void lstm_swap_leading(void* out, const void* in, int64_t A, int64_t B, int64_t C, size_t elem_bytes,
                       cudaStream_t stream) {
  const int64_t n = A * B * C;
  if (n == 0) return;
  if (elem_bytes == 4)
    swap_leading_kernel<<<grid_for(n), kBlock, 0, stream>>>(static_cast<uint32_t*>(out),
                                                             static_cast<const uint32_t*>(in), A, B, C);
  else if (elem_bytes == 2)
    swap_leading_kernel<<<grid_for(n), kBlock, 0, stream>>>(static_cast<uint16_t*>(out),
                                                             static_cast<const uint16_t*>(in), A, B, C);
  else
    TANDEM_CHECK(false, "lstm_swap_leading: elements of " + std::to_string(elem_bytes) + " bytes");
  CUDA_CHECK_LAUNCH();
}

}  // namespace tandem::kernels::cuda
