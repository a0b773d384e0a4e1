// tandem bench kernels [--device cpu|cuda] [--json OUT] [--compare BASELINE]
// tandem bench collectives | overlap | model: see each subcommand's --help
#include <fmt/format.h>

#include <fstream>
#include <memory>

#include "bench/bench_collectives.h"
#include "bench/bench_kernels.h"
#include "bench/bench_model.h"
#include "bench/bench_overlap.h"
#include "runtime/parallel/process_group.h"
#include "runtime/core/error.h"
#include "tools/commands.h"

namespace tandem::tools {

namespace {

struct BenchArgs {
  std::string device;  // empty: cuda when a GPU is visible, else cpu
  std::string json_out;
  std::string compare;
  double tolerance = 0.10;
};

void run_bench_kernels(const BenchArgs& args) {
  Device device = args.device.empty() ? (cuda_device_count() > 0 ? Device::cuda(0) : Device::cpu())
                                      : parse_device(args.device);
  if (device.is_cuda()) require_cuda("tandem bench kernels --device cuda");
  bench::KernelReport report = bench::run_kernel_bench(device);
  bench::print_table(report);
  if (!args.json_out.empty()) {
    std::ofstream out(args.json_out);
    out << bench::to_json(report).dump(2) << "\n";
    if (!out) throw UserError(fmt::format("cannot write {}", args.json_out));
  }
  if (!args.compare.empty()) {
    int regressions = bench::compare_with_baseline(report, args.compare, args.tolerance);
    if (regressions > 0) throw UserError(fmt::format("{} kernels regressed against {}", regressions, args.compare));
    fmt::print("no regressions against {}\n", args.compare);
  }
}

struct CollectiveArgs {
  std::string backend;  // empty: the launcher's choice, else nccl with GPUs, gloo without
  std::string json_out;
  int64_t max_bytes = int64_t{256} << 20;
};

void run_bench_collectives(const CollectiveArgs& args) {
  parallel::WorldEnv world = parallel::read_world_env();
  std::string backend = !args.backend.empty() ? args.backend : world.backend;
  bool gpu = backend == "nccl" || (backend.empty() && cuda_device_count() > 0);
  Device device = gpu ? Device::cuda(world.local_rank % std::max(1, cuda_device_count())) : Device::cpu();
  if (gpu) {
    require_cuda("tandem bench collectives --backend nccl");
    set_current_device(device);
  }
  bench::CollectiveOptions options;
  options.max_bytes = args.max_bytes;
  parallel::ProcessGroup pg = parallel::init_process_group(gpu ? "nccl" : "gloo", device, options.timeout);
  std::shared_ptr<collectives::Communicator> comm = pg.comm;
  if (!comm) {  // a world of one still measures the backend's local cost
    collectives::CommOptions co;
    co.timeout = options.timeout;
    comm = gpu ? collectives::make_nccl_communicator(collectives::make_memory_store(), 0, 1, device, co)
               : collectives::make_gloo_communicator(collectives::make_memory_store(), 0, 1, co);
  }
  auto results = bench::run_collective_bench(*comm, device, options);
  if (comm->rank() != 0) return;
  bench::print_collective_table(results, *comm);
  if (!args.json_out.empty()) {
    std::ofstream out(args.json_out);
    out << bench::collective_json(results, *comm).dump(2) << "\n";
    if (!out) throw UserError(fmt::format("cannot write {}", args.json_out));
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks");
  bench->require_subcommand(1);
  auto args = std::make_shared<BenchArgs>();
  CLI::App* kernels = bench->add_subcommand("kernels", "Time every kernel against the device's measured peaks");
  kernels->add_option("--device", args->device, "cpu, cuda or cuda:N (default: cuda when a GPU is visible)");
  kernels->add_option("--json", args->json_out, "Write the results as JSON");
  kernels->add_option("--compare", args->compare, "Flag kernels slower than in this --json baseline");
  kernels->add_option("--tolerance", args->tolerance, "Slowdown that counts as a regression (default 0.10)");
  kernels->callback([args] { run_bench_kernels(*args); });

  auto cargs = std::make_shared<CollectiveArgs>();
  CLI::App* coll = bench->add_subcommand("collectives", "all_reduce/all_gather/reduce_scatter/broadcast, 8 B to 256 MB");
  coll->add_option("--backend", cargs->backend, "gloo or nccl (default: the launcher's choice)")
      ->check(CLI::IsMember({"gloo", "nccl"}));
  coll->add_option("--json", cargs->json_out, "Write the results as JSON (rank 0)");
  coll->add_option("--max-bytes", cargs->max_bytes, "Largest size (default 256 MiB)")->check(CLI::Range(int64_t{8}, int64_t{1} << 34));
  coll->callback([cargs] { run_bench_collectives(*cargs); });

  auto oargs = std::make_shared<bench::OverlapOptions>();
  auto ojson = std::make_shared<std::string>();
  CLI::App* ovl = bench->add_subcommand("overlap", "Exposed communication of a DDP step (launched, or --simulated network)");
  ovl->add_flag("--simulated", oargs->simulated, "One process, a simulated network (on the GPU when one is visible)");
  ovl->add_option("--world", oargs->world, "Simulated world size (default 8)");
  ovl->add_option("--gbps", oargs->gbps, "Simulated bandwidth, GB/s (default: all-reduce = --comm-fraction of backward)");
  ovl->add_option("--latency-us", oargs->latency_us, "Simulated latency per operation (default 20)");
  ovl->add_option("--comm-fraction", oargs->comm_fraction, "All-reduce / backward the default bandwidth aims at (0.8)");
  ovl->add_option("--device", oargs->device, "cpu or cuda (default: simulated on a GPU if visible; launched on cpu)");
  ovl->add_option("--width", oargs->width, "Layer width (default 1024 on GPU, 512 on CPU)");
  ovl->add_option("--layers", oargs->layers, "Square Linear layers (default 24 on GPU, 12 on CPU)");
  ovl->add_option("--batch", oargs->batch, "Batch per rank (default 4096 on GPU, 256 on CPU)");
  ovl->add_option("--steps", oargs->steps, "Timed steps (default 5)");
  ovl->add_option("--bucket-mb", oargs->bucket_mb, "DDP bucket cap (default: one layer per bucket)");
  ovl->add_option("--json", *ojson, "Write the results as JSON (rank 0)");
  ovl->callback([oargs, ojson] { bench::run_overlap_command(*oargs, *ojson); });

  auto margs = std::make_shared<bench::ModelBenchOptions>();
  auto mjson = std::make_shared<std::string>();
  CLI::App* model = bench->add_subcommand(
      "model", "Training steps of a model: step time, tokens/s or images/s, model TFLOP/s, MFU");
  model->add_option("--model", margs->model,
                    "gpt2-124m, gpt2-350m, gpt2-tiny, lstm, cnn or resnet (default gpt2-124m)");
  model->add_option("--batch-size", margs->batch_size,
                    "Sequences or images per step (default: gpt2 8 on GPU, 4 on CPU; lstm 128 / 32; "
                    "cnn and resnet 512 / 128)");
  model->add_option("--seq-len", margs->seq_len,
                    "Tokens per sequence, token models only (default: gpt2 n_positions on GPU, <= 128 on CPU; "
                    "lstm 64)");
  model->add_option("--steps", margs->steps, "Timed steps (default 20)");
  model->add_option("--warmup", margs->warmup, "Untimed steps first (default 5)");
  model->add_option("--device", margs->device, "cpu, cuda, cuda:N or auto (default auto)");
  model->add_option("--dtype", margs->dtype, "f32 or bf16 (default bf16 on GPU, but f32 for lstm; f32 on CPU)");
  model->add_option("--json", *mjson, "Write the results as one JSON object");
  model->callback([margs, mjson] { bench::run_model_command(*margs, *mjson); });
}

}  // namespace tandem::tools
