// CUDA Linear matmul through cuBLASLt, f32 and bf16 storage, fp32 compute
// (CUBLAS_COMPUTE_32F: no TF32, so f32 results match the CPU to ~1e-6).
// The bias and the GELU run in the GEMM's epilogue where cuBLASLt allows it,
// else as separate kernels (kernels/cuda/bias.cu, activation.cu).
//
// Note [Row-major through cuBLASLt]: cuBLASLt reads matrices column-major.
// A row-major (R, K) matrix with row stride K is, byte for byte, the
// column-major (K, R) matrix with leading dimension K: its transpose. So
// each row-major product is computed transposed, and nothing is copied.
// Writing "X as (r, c)" for the column-major shape cuBLASLt is told for the
// stored X (leading dimension r):
//   forward  out (N, OC) = inp @ W^T      D (OC, N)  = op_T(W as (C, OC)) @ (inp as (C, N))
//   dinp     dinp (N, C) = dout @ W       D (C, N)   = (W as (C, OC)) @ (dout as (OC, N))
//   dweight  dW (OC, C) += dout^T @ inp   D (C, OC) += (inp as (C, N)) @ op_T(dout as (OC, N))
// where D is the output as (cols, rows) of its row-major shape. The bias
// epilogue adds a vector over D's m rows to every column: the row-major
// bias over OC. The GELU aux matrix has D's layout, so pre_gelu is (N, OC)
// row-major like out. Forward is the "TN" layout cuBLASLt favours.
//
// Note [cuBLASLt setup]: one handle per device and one 32 MiB workspace per
// (device, stream) are created on first use and kept for the life of the
// process (never freed: freeing at exit can race the CUDA driver's own
// teardown). The workspace is per stream because two GEMMs running at once
// on different streams must not share scratch memory. Each thread also
// caches, per GEMM shape, the descriptors and the algorithm the heuristic
// chose; after the first call of a shape a GEMM only sets its bias/aux
// pointers and enqueues. Pointer alignment is part of the cache key, since
// cuBLASLt picks algorithms by the alignment of every buffer.
#include <cublasLt.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "kernels/activation.h"
#include "kernels/bias.h"
#include "kernels/cuda/common.cuh"
#include "kernels/matmul.h"

namespace tandem::kernels::cuda {

namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // what cuBLAS suggests for Hopper
// cuBLASLt's largest alignment requirement; any pointer aligned to this
// suits every algorithm.
constexpr uint64_t kMaxAlignment = 256;
// CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD for GELU must be a multiple of 8
// elements (cublasLt.h); other widths take the unfused path.
constexpr int64_t kGeluAuxLdMultiple = 8;

// ---- One-time setup: handles and workspaces (Note [cuBLASLt setup])

class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    CUDA_CHECK(cudaGetDevice(&previous_));
    CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceScope() { cudaSetDevice(previous_); }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = 0;
};

cublasLtHandle_t handle_for(int device) {
  static std::mutex mutex;
  static std::map<int, cublasLtHandle_t> handles;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = handles.find(device);
  if (it != handles.end()) return it->second;
  DeviceScope scope(device);
  cublasLtHandle_t handle = nullptr;
  CUBLASLT_CHECK(cublasLtCreate(&handle));
  handles.emplace(device, handle);
  return handle;
}

void* workspace_for(int device, cudaStream_t stream) {
  static std::mutex mutex;
  static std::map<std::pair<int, cudaStream_t>, void*> workspaces;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = workspaces.find({device, stream});
  if (it != workspaces.end()) return it->second;
  DeviceScope scope(device);
  void* workspace = nullptr;
  CUDA_CHECK(cudaMalloc(&workspace, kWorkspaceBytes));
  workspaces.emplace(std::make_pair(device, stream), workspace);
  return workspace;
}

// ---- One GEMM in cuBLASLt's column-major terms

// D (m, n) = op(A) op(B) + beta D, then the epilogue. op(A) is (m, k), op(B)
// is (k, n); lda/ldb/ldd are the column-major leading dimensions of the
// stored A, B and D. See Note [Row-major through cuBLASLt].
struct Gemm {
  cublasOperation_t transa = CUBLAS_OP_N, transb = CUBLAS_OP_N;
  int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  int64_t lda = 0;
  const void* b = nullptr;
  int64_t ldb = 0;
  void* d = nullptr;
  int64_t ldd = 0;
  float beta = 0.f;  // 0: D is overwritten (and never read); 1: D accumulates
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;  // (m), BIAS epilogues
  void* aux = nullptr;         // (m, n) with leading dimension ldd, GELU_AUX epilogues
};

// The largest power of two (at most kMaxAlignment) dividing the address and
// the leading dimension in bytes: cuBLASLt's alignment requirements cover
// both (CUBLASLT_ALGO_CAP_MIN_ALIGNMENT_*).
uint32_t alignment_of(const void* ptr, int64_t ld_bytes = 0) {
  uint64_t bits = reinterpret_cast<uintptr_t>(ptr) | static_cast<uint64_t>(ld_bytes) | kMaxAlignment;
  return static_cast<uint32_t>(bits & (~bits + 1));
}

struct PlanKey {
  int device;
  DType dtype;
  cublasOperation_t transa, transb;
  int64_t m, n, k, lda, ldb, ldd;
  cublasLtEpilogue_t epilogue;
  uint32_t align_a, align_b, align_d, align_bias, align_aux;
  auto operator<=>(const PlanKey&) const = default;
};

// Descriptors and the heuristic's algorithm for one PlanKey. `found` is
// false when cuBLASLt has no algorithm for it (an epilogue it cannot fuse
// for these sizes, say); the caller then takes another path.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo = {};
  bool found = false;

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {  // statuses ignored: destroying host-side descriptors cannot fail usefully
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

template <typename V>
void set_desc(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const V& value) {
  CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)));
}

template <typename V>
void set_pref(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, const V& value) {
  CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)));
}

struct PreferenceGuard {
  cublasLtMatmulPreference_t pref = nullptr;
  ~PreferenceGuard() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
  }
};

// Whether `status` means "cuBLASLt cannot do this GEMM" rather than a
// failure: NOT_SUPPORTED always; INVALID_VALUE too for a fused epilogue,
// whose constraints differ by version and size, and which has an unfused
// path to fall back to. A plain GEMM has none, so there it is an error.
bool may_decline(const Gemm& g, cublasStatus_t status) {
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) return true;
  return status == CUBLAS_STATUS_INVALID_VALUE && g.epilogue != CUBLASLT_EPILOGUE_DEFAULT;
}

std::unique_ptr<Plan> make_plan(const Gemm& g, const PlanKey& key, cublasLtHandle_t handle) {
  auto plan = std::make_unique<Plan>();
  cudaDataType_t type = key.dtype == DType::f32 ? CUDA_R_32F : CUDA_R_16BF;
  CUBLASLT_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  set_desc(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, g.transa);
  set_desc(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, g.transb);
  set_desc(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, g.epilogue);
  // The bias takes D's type by default (bf16 with bf16 D, f32 with f32 D),
  // which is what we store. The heuristic reads the bias and aux pointers
  // for their alignment, so the real ones are set before it runs.
  if (g.bias) set_desc(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
  if (g.aux) {
    set_desc(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, g.aux);
    set_desc(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, g.ldd);
  }

  // Layouts describe the matrices as stored, before op().
  bool ta = g.transa == CUBLAS_OP_T, tb = g.transb == CUBLAS_OP_T;
  CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&plan->a, type, ta ? g.k : g.m, ta ? g.m : g.k, g.lda));
  CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&plan->b, type, tb ? g.n : g.k, tb ? g.k : g.n, g.ldb));
  CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&plan->d, type, g.m, g.n, g.ldd));

  PreferenceGuard guard;
  CUBLASLT_CHECK(cublasLtMatmulPreferenceCreate(&guard.pref));
  set_pref(guard.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t{kWorkspaceBytes});
  set_pref(guard.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_a);
  set_pref(guard.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_b);
  set_pref(guard.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_d);  // C is D
  set_pref(guard.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_d);

  cublasLtMatmulHeuristicResult_t result = {};
  int count = 0;
  cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle, plan->desc, plan->a, plan->b, plan->d, plan->d,
                                                         guard.pref, 1, &result, &count);
  if (!may_decline(g, status)) CUBLASLT_CHECK(status);
  plan->found = status == CUBLAS_STATUS_SUCCESS && count > 0 && result.state == CUBLAS_STATUS_SUCCESS;
  plan->algo = result.algo;
  return plan;
}

// Runs `g` on `stream`; false (and nothing enqueued) when cuBLASLt has no
// algorithm for it.
bool try_gemm(const Gemm& g, DType dtype, int device, cudaStream_t stream) {
  int64_t elem = static_cast<int64_t>(dtype_size(dtype));
  PlanKey key{device, dtype, g.transa, g.transb, g.m, g.n, g.k, g.lda, g.ldb, g.ldd, g.epilogue,
              alignment_of(g.a, g.lda * elem), alignment_of(g.b, g.ldb * elem), alignment_of(g.d, g.ldd * elem),
              g.bias ? alignment_of(g.bias) : 0u, g.aux ? alignment_of(g.aux, g.ldd * elem) : 0u};
  cublasLtHandle_t handle = handle_for(device);
  // Per thread, so a cached plan's descriptor is never written by two
  // threads at once (see Note [cuBLASLt setup]).
  thread_local std::map<PlanKey, std::unique_ptr<Plan>> plans;
  auto it = plans.find(key);
  if (it == plans.end()) it = plans.emplace(key, make_plan(g, key, handle)).first;
  Plan& plan = *it->second;
  if (!plan.found) return false;

  // The cached descriptor holds the pointers of the call that made it.
  if (g.bias) set_desc(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
  if (g.aux) set_desc(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, g.aux);
  float alpha = 1.f, beta = g.beta;
  cublasStatus_t status = cublasLtMatmul(handle, plan.desc, &alpha, g.a, plan.a, g.b, plan.b, &beta, g.d, plan.d,
                                         g.d, plan.d, &plan.algo, workspace_for(device, stream), kWorkspaceBytes,
                                         stream);
  if (may_decline(g, status)) {
    plan.found = false;  // rejected before anything was enqueued; never try this plan again
    return false;
  }
  CUBLASLT_CHECK(status);
  return true;
}

// A plain GEMM (no epilogue) must always run: cuBLASLt covers every size and
// alignment of f32 and bf16, so a miss here is a bug, not a fallback case.
void gemm(const Gemm& g, DType dtype, int device, cudaStream_t stream) {
  TANDEM_CHECK(try_gemm(g, dtype, device, stream),
               "cuBLASLt found no algorithm for a " + std::string(dtype_name(dtype)) + " GEMM m=" +
                   std::to_string(g.m) + " n=" + std::to_string(g.n) + " k=" + std::to_string(g.k));
}

void fill_zero(void* ptr, int64_t numel, DType dtype, cudaStream_t stream) {
  // All-zero bits are 0.0 in f32 and bf16.
  CUDA_CHECK(cudaMemsetAsync(ptr, 0, static_cast<size_t>(numel) * dtype_size(dtype), stream));
}

}  // namespace

void matmul_forward(void* out, void* pre_gelu, const void* inp, const void* weight, const void* bias,
                    Epilogue epilogue, int64_t N, int64_t C, int64_t OC, DType dtype, int device,
                    cudaStream_t stream) {
  if (N == 0 || OC == 0) return;
  bool with_gelu = epilogue == Epilogue::gelu_bias, with_bias = epilogue != Epilogue::none;
  // Without a fused GELU the product (plus bias) lands in pre_gelu and a
  // separate kernel writes out = gelu(pre_gelu).
  void* target = with_gelu ? pre_gelu : out;
  bool bias_done = false;

  if (C == 0) {
    fill_zero(target, N * OC, dtype, stream);  // an empty sum
  } else {
    // D (OC, N) = op_T(W (C, OC)) @ inp (C, N): Note [Row-major through cuBLASLt].
    Gemm g{.transa = CUBLAS_OP_T, .transb = CUBLAS_OP_N, .m = OC, .n = N, .k = C,
           .a = weight, .lda = C, .b = inp, .ldb = C, .d = target, .ldd = OC};
    if (with_gelu && OC % kGeluAuxLdMultiple == 0) {
      Gemm fused = g;
      fused.d = out;
      fused.epilogue = CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
      fused.bias = bias;
      fused.aux = pre_gelu;
      if (try_gemm(fused, dtype, device, stream)) return;
    }
    if (with_bias) {
      Gemm fused = g;
      fused.epilogue = CUBLASLT_EPILOGUE_BIAS;
      fused.bias = bias;
      bias_done = try_gemm(fused, dtype, device, stream);
    }
    if (!bias_done) gemm(g, dtype, device, stream);
  }
  if (with_bias && !bias_done) bias_add(target, bias, N, OC, dtype, stream);
  if (with_gelu) gelu_forward(out, pre_gelu, N * OC, dtype, stream);
}

void matmul_backward(void* dinp, void* dweight, void* dbias, const void* dout, const void* inp,
                     const void* weight, int64_t N, int64_t C, int64_t OC, DType dtype, int device,
                     cudaStream_t stream) {
  if (dinp && N > 0 && C > 0) {
    if (OC == 0) {
      fill_zero(dinp, N * C, dtype, stream);
    } else {
      // dinp: D (C, N) = W (C, OC) @ dout (OC, N), overwritten.
      gemm({.transa = CUBLAS_OP_N, .transb = CUBLAS_OP_N, .m = C, .n = N, .k = OC,
            .a = weight, .lda = C, .b = dout, .ldb = OC, .d = dinp, .ldd = C, .beta = 0.f},
           dtype, device, stream);
    }
  }
  if (dweight && N > 0 && C > 0 && OC > 0) {
    // dweight: D (C, OC) += inp (C, N) @ op_T(dout (OC, N)), accumulated.
    gemm({.transa = CUBLAS_OP_N, .transb = CUBLAS_OP_T, .m = C, .n = OC, .k = N,
          .a = inp, .lda = C, .b = dout, .ldb = OC, .d = dweight, .ldd = C, .beta = 1.f},
         dtype, device, stream);
  }
  if (dbias) bias_backward(dbias, dout, N, OC, dtype, stream);
}

}  // namespace tandem::kernels::cuda
