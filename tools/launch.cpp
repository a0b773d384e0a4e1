// tandem launch: runs a command as N workers per node, torchrun-style.
//
//   tandem launch [--nproc-per-node N|gpu|cpu|auto] [--nnodes N --node-rank I
//                 --master-addr H --master-port P] [--backend nccl|gloo]
//                 [--max-restarts K] [--node-timeout SECONDS] [--stop-grace SECONDS]
//                 -- command args...
//
// This file turns flags (or Slurm's variables) into a plan, serves the TCP
// store on node 0, brings every node's launcher together, and builds each
// worker's environment. Watching the workers, spreading a failure to the
// other nodes and restarting the whole job live in launcher.h (Note
// [Restarts]); starting the workers and relaying their output in workers.h.
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <thread>

#include "collectives/tcp_store.h"
#include "runtime/core/device.h"
#include "runtime/core/error.h"
#include "tools/commands.h"
#include "tools/launcher.h"
#include "tools/slurm.h"
#include "tools/workers.h"

namespace tandem::tools {

namespace {

using collectives::Store;
using Clock = std::chrono::steady_clock;

constexpr int kDefaultMasterPort = 29500;
constexpr double kMinNodeTimeout = 1;  // s: heartbeats come every 250 ms at best (Note [Lost nodes])
constexpr double kMaxStopGrace = 3600;  // s: a longer wait is a hung job, not a grace period
constexpr Millis kJoinTimeout{300000};  // for every node's launcher to join
constexpr Millis kJoinPoll{200};        // how often the joined nodes are counted
constexpr Millis kMismatchWait{5000};   // node 0, for the others to see that the nodes disagree

struct LaunchArgs {
  std::string nproc_per_node;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = kDefaultMasterPort;
  std::string backend;
  int max_restarts = 0;
  double node_timeout = kDefaultNodeTimeout.count() / 1000.0;  // s
  double stop_grace = kDefaultStopGrace.count() / 1000.0;      // s
  std::vector<std::string> command;
  CLI::Option *nproc_opt = nullptr, *nnodes_opt = nullptr, *node_rank_opt = nullptr, *addr_opt = nullptr,
              *port_opt = nullptr;
};

int parse_nproc(const std::string& text) {
  if (text == "gpu") {
    int gpus = cuda_device_count();
    if (gpus == 0) throw UserError("--nproc-per-node gpu: no CUDA GPU is visible; give a number, 'cpu' or 'auto'");
    return gpus;
  }
  if (text == "cpu") return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (text == "auto") return std::max(1, cuda_device_count());
  if (!text.empty() && text.size() <= 6 && text.find_first_not_of("0123456789") == std::string::npos &&
      std::stoi(text) > 0)
    return std::stoi(text);
  throw UserError(fmt::format("--nproc-per-node '{}': expected a positive number, 'gpu', 'cpu' or 'auto'", text));
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.starts_with("127.");
}

LaunchPlan resolve_plan(const LaunchArgs& a) {
  if (a.max_restarts < 0)
    throw UserError(fmt::format("--max-restarts {}: expected 0 or more whole-job restarts", a.max_restarts));
  if (!(a.node_timeout >= kMinNodeTimeout && a.node_timeout <= 86400))
    throw UserError(fmt::format("--node-timeout {}: expected {} to 86400 seconds", a.node_timeout, kMinNodeTimeout));
  if (!(a.stop_grace >= 0 && a.stop_grace <= kMaxStopGrace))
    throw UserError(fmt::format("--stop-grace {}: expected 0 to {} seconds", a.stop_grace, kMaxStopGrace));
  if (a.command.empty()) throw UserError("no command to run: tandem launch [options] -- <command> [args...]");
  bool all_given = a.nproc_opt->count() && a.nnodes_opt->count() && a.node_rank_opt->count() && a.addr_opt->count();
  SlurmJob slurm = all_given ? SlurmJob{} : read_slurm_env();

  LaunchPlan p;
  p.nproc = a.nproc_opt->count() ? parse_nproc(a.nproc_per_node) : slurm.nproc_per_node.value_or(1);
  p.nnodes = a.nnodes_opt->count() ? a.nnodes : slurm.nnodes.value_or(1);
  p.node_rank = a.node_rank_opt->count() ? a.node_rank : slurm.node_rank.value_or(0);
  // One node serves and reaches its own store on loopback, whatever Slurm lists.
  p.master_addr = a.master_addr;
  if (!a.addr_opt->count() && p.nnodes > 1 && slurm.nodelist) p.master_addr = first_slurm_host(*slurm.nodelist);
  p.master_port = a.master_port;
  p.port_given = a.port_opt->count() > 0;
  p.backend = !a.backend.empty() ? a.backend : cuda_device_count() > 0 ? "nccl" : "gloo";
  p.max_restarts = a.max_restarts;
  p.node_timeout = Millis(static_cast<int64_t>(a.node_timeout * 1000));
  p.stop_grace = Millis(static_cast<int64_t>(a.stop_grace * 1000));
  if (p.nnodes < 1) throw UserError(fmt::format("--nnodes {}: needs at least 1 node", p.nnodes));
  if (p.node_rank < 0 || p.node_rank >= p.nnodes)
    throw UserError(
        fmt::format("--node-rank {} is outside 0..{} for --nnodes {}", p.node_rank, p.nnodes - 1, p.nnodes));
  if (p.master_port < 0 || p.master_port > 65535 || (p.master_port == 0 && p.nnodes > 1))
    throw UserError(
        fmt::format("--master-port {}: expected 1..65535 (0, a free port, only on one node)", p.master_port));
  if (p.backend != "nccl" && p.backend != "gloo")
    throw UserError(fmt::format("--backend '{}': expected nccl or gloo", p.backend));
  if (const char* token = std::getenv("TANDEM_JOB_TOKEN"); token && *token) {
    p.token = token;
  } else if (p.nnodes > 1) {
    throw UserError(fmt::format(
        "a job on {} nodes needs TANDEM_JOB_TOKEN set to the same secret on every node "
        "(e.g. export TANDEM_JOB_TOKEN=$(openssl rand -hex 16)); it authenticates the store",
        p.nnodes));
  } else {
    p.token = collectives::generate_job_token();
  }
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  p.host = host;
  return p;
}

Env worker_env(const LaunchPlan& p, int port, int local_rank, int attempt) {
  Env env = {
      {"RANK", std::to_string(p.node_rank * p.nproc + local_rank)},
      {"LOCAL_RANK", std::to_string(local_rank)},
      {"WORLD_SIZE", std::to_string(p.nnodes * p.nproc)},
      {"LOCAL_WORLD_SIZE", std::to_string(p.nproc)},
      {"GROUP_RANK", std::to_string(p.node_rank)},
      {"GROUP_WORLD_SIZE", std::to_string(p.nnodes)},
      {"MASTER_ADDR", p.master_addr},
      {"MASTER_PORT", std::to_string(port)},
      {"TANDEM_JOB_TOKEN", p.token},
      {"TANDEM_BACKEND", p.backend},
      {"TANDEM_RESTART_COUNT", std::to_string(attempt)},
      {"TANDEM_MAX_RESTARTS", std::to_string(p.max_restarts)},
  };
  // CPU workers share the cores: one OpenMP/OpenBLAS thread each unless told.
  if (p.backend == "gloo" && p.nproc > 1 && !std::getenv("OMP_NUM_THREADS")) env.push_back({"OMP_NUM_THREADS", "1"});
  return env;
}

// Waits for one launcher per node rank and checks that they agree.
void rendezvous(Store& store, const LaunchPlan& p) {
  std::string me = fmt::format("{} {} {}", p.nproc, p.host, getpid());
  std::string held = collectives::to_string(
      store.compare_set(fmt::format("launch/node/{}", p.node_rank), {}, collectives::to_bytes(me)));
  if (held != me)
    throw UserError(fmt::format(
        "node rank {} is already taken (nproc, host, pid: {}); give each node its own --node-rank", p.node_rank, held));
  store.set(fmt::format("launch/max_restarts/{}", p.node_rank), collectives::to_bytes(std::to_string(p.max_restarts)));
  store.set(fmt::format("launch/node_timeout/{}", p.node_rank),
            collectives::to_bytes(std::to_string(p.node_timeout.count())));
  store.compare_set("launch/attempt", {}, collectives::to_bytes("0"));
  std::vector<std::string> keys;
  for (int i = 0; i < p.nnodes; i++) keys.push_back(fmt::format("launch/node/{}", i));
  auto start = Clock::now();
  bool told = false;
  while (!store.check(keys)) {
    if (Clock::now() - start > kJoinTimeout) {
      std::string missing;
      for (const auto& k : keys)
        if (!store.check({k})) missing += " " + k.substr(k.rfind('/') + 1);
      throw UserError(fmt::format("node ranks{} did not join {}:{} within {} s; start one launcher per node",
                                  missing, p.master_addr, p.master_port, kJoinTimeout.count() / 1000));
    }
    if (!told && Clock::now() - start > Millis(10000)) {
      write_locked(2, fmt::format("tandem launch: waiting for all {} nodes to join {}:{}\n", p.nnodes,
                                  p.master_addr, p.master_port));
      told = true;
    }
    std::this_thread::sleep_for(kJoinPoll);
  }
  // Node I writes these right after its node key: its launcher has
  // node_timeout to do so (Note [Lost nodes]).
  auto value = [&](const std::string& key) { return collectives::to_string(store.get(key, p.node_timeout)); };
  std::string mismatch;
  for (int i = 0; i < p.nnodes && mismatch.empty(); i++) {
    std::string other = value(keys[i]);
    int restarts = std::atoi(value(fmt::format("launch/max_restarts/{}", i)).c_str());
    int64_t node_timeout = std::atoll(value(fmt::format("launch/node_timeout/{}", i)).c_str());
    if (std::atoi(other.c_str()) != p.nproc)
      mismatch = fmt::format("node {} has --nproc-per-node {} but node {} has {} (nproc, host, pid: {}); every node "
                             "needs the same",
                             p.node_rank, p.nproc, i, std::atoi(other.c_str()), other);
    else if (restarts != p.max_restarts)
      mismatch = fmt::format("node {} has --max-restarts {} but node {} has {}; every node needs the same",
                             p.node_rank, p.max_restarts, i, restarts);
    else if (node_timeout != p.node_timeout.count())
      mismatch = fmt::format("node {} has --node-timeout {} but node {} has {}; every node needs the same",
                             p.node_rank, p.node_timeout.count() / 1000.0, i, node_timeout / 1000.0);
  }
  if (mismatch.empty()) return;
  // Every launcher finds a mismatch; node 0 keeps the store up (a few
  // seconds at most) until the others have found theirs too.
  if (p.node_rank != 0) store.add("launch/gone", 1);
  auto deadline = Clock::now() + kMismatchWait;
  while (p.node_rank == 0 && store.add("launch/gone", 0) < p.nnodes - 1 && Clock::now() < deadline)
    std::this_thread::sleep_for(kJoinPoll);
  throw UserError(mismatch);
}

int run_launch(const LaunchArgs& args) {
  LaunchPlan p = resolve_plan(args);
  std::unique_ptr<collectives::TcpStoreServer> server;
  int port = p.master_port;
  if (p.node_rank == 0) {
    std::string bind = p.nnodes == 1 && is_loopback(p.master_addr) ? "127.0.0.1" : "0.0.0.0";
    try {
      server = std::make_unique<collectives::TcpStoreServer>(bind, port, p.token);
    } catch (const std::exception& e) {
      // One node with the default port: nobody else needs to find the store
      // there, so a busy 29500 (another job) is no reason to fail.
      if (p.nnodes > 1 || p.port_given) throw UserError(fmt::format("--master-port {}: {}", port, e.what()));
      server = std::make_unique<collectives::TcpStoreServer>(bind, 0, p.token);
    }
    port = server->port();
  }
  std::shared_ptr<Store> store;
  if (p.nnodes > 1) {
    // Note [Lost nodes]: a store request unanswered for node_timeout ends the job here.
    store = collectives::connect_tcp_store(p.node_rank == 0 ? "127.0.0.1" : p.master_addr, port, p.token,
                                           {.connect_timeout = kJoinTimeout, .reply_timeout = p.node_timeout});
    try {
      rendezvous(*store, p);
    } catch (const collectives::StoreReplyTimeout& e) {
      write_locked(2, fmt::format("tandem launch: lost the store at {}:{} while the nodes joined: no reply within "
                                  "{:.1f} s (--node-timeout {})\n",
                                  p.master_addr, port, e.waited().count() / 1000.0, p.node_timeout.count() / 1000.0));
      return 1;
    }
  }
  // Resolved once, so a command that cannot be found is a user error now,
  // not at a restart.
  resolve_command(args.command[0], worker_env(p, port, 0, 0));
  auto start = [&](int attempt) {
    std::vector<WorkerSpec> specs;
    for (int local = 0; local < p.nproc; local++)
      specs.push_back({.rank = p.node_rank * p.nproc + local, .env = worker_env(p, port, local, attempt)});
    return std::make_unique<WorkerGroup>(args.command, specs);
  };
  install_launcher_signal_handlers();
  return run_job(p, store, start);
}

}  // namespace

void add_launch_command(CLI::App& app) {
  auto args = std::make_shared<LaunchArgs>();
  CLI::App* cmd = app.add_subcommand("launch", "Run a command as N workers per node (torchrun-compatible)");
  args->nproc_opt = cmd->add_option("--nproc-per-node,--nproc_per_node", args->nproc_per_node,
                                    "Workers on this node: a number, gpu, cpu (one per core) or auto "
                                    "(GPUs if any, else 1); default 1, or Slurm's tasks/GPUs per node");
  args->nnodes_opt = cmd->add_option("--nnodes", args->nnodes, "Nodes in the job (default 1, or SLURM_NNODES)");
  args->node_rank_opt =
      cmd->add_option("--node-rank,--node_rank", args->node_rank, "This node's rank, 0..nnodes-1 (or SLURM_NODEID)");
  args->addr_opt = cmd->add_option("--master-addr,--master_addr", args->master_addr,
                                   "Host of node 0, which serves the store (default 127.0.0.1; under Slurm the "
                                   "first host of SLURM_JOB_NODELIST)");
  args->port_opt = cmd->add_option("--master-port,--master_port", args->master_port,
                                   "Port of the store on node 0 (default 29500, or a free one on a single node "
                                   "when 29500 is busy; 0 picks a free one on a single node)");
  cmd->add_option("--backend", args->backend, "nccl or gloo (default: nccl when a GPU is visible, else gloo)");
  cmd->add_option("--max-restarts,--max_restarts", args->max_restarts, "Whole-job restarts after a worker fails (default 0); workers see TANDEM_RESTART_COUNT");
  cmd->add_option("--node-timeout,--node_timeout", args->node_timeout,
                  "Seconds after which a silent node is lost (default 30, at least 1, the same on every node): node "
                  "0 ends the job when another node's launcher stops its heartbeats this long, and another node's "
                  "launcher stops its workers and exits when the store on node 0 does not answer this long");
  cmd->add_option("--stop-grace,--stop_grace", args->stop_grace,
                  "Seconds a worker has between SIGTERM and SIGKILL when the job stops: a worker failed, a node "
                  "was lost or the launcher got a signal (a second one kills at once); default 10, 0 to 3600");
  cmd->add_option("command", args->command, "The command each worker runs; put -- before it");
  cmd->footer(
      "Each worker gets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT,\n"
      "TANDEM_JOB_TOKEN and TANDEM_BACKEND; its output lines are prefixed with \"[rank R] \". Jobs on several\n"
      "nodes need TANDEM_JOB_TOKEN set to one secret on every node. When a worker fails, the job's workers are\n"
      "stopped and, --max-restarts times at most, all started again (same ranks) with TANDEM_RESTART_COUNT\n"
      "counting the restarts (tandem train then resumes from its newest checkpoint). A lost node (see\n"
      "--node-timeout) ends the job without a restart. Exit code: 0 when every worker of an attempt succeeds,\n"
      "else the job's first failure's exit code (128 + signal when it was killed by one; 1 for a lost node\n"
      "or store).");
  cmd->callback([args] {
    int code = run_launch(*args);
    if (code != 0) std::exit(code);  // the launcher's exit code is the job's; everything is torn down by now
  });
}

}  // namespace tandem::tools
