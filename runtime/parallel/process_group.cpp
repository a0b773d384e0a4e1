#include "runtime/parallel/process_group.h"

#include <fmt/format.h>

#include <charconv>
#include <cstring>
#include <cstdlib>

#include "collectives/tcp_store.h"
#include "runtime/core/error.h"
#include "runtime/core/log.h"

namespace tandem::parallel {

namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

int env_int(const char* name, int fallback, int min_value) {
  const char* v = env(name);
  if (!v) return fallback;
  int out = 0;
  auto [end, ec] = std::from_chars(v, v + std::strlen(v), out);
  if (ec != std::errc() || *end != '\0' || out < min_value)
    throw UserError(fmt::format("environment variable {}={} is not an integer >= {}", name, v, min_value));
  return out;
}

}  // namespace

WorldEnv read_world_env() {
  WorldEnv w;
  bool mpi = !env("RANK") && env("OMPI_COMM_WORLD_RANK");
  w.rank = env_int(mpi ? "OMPI_COMM_WORLD_RANK" : "RANK", 0, 0);
  w.world_size = env_int(mpi ? "OMPI_COMM_WORLD_SIZE" : "WORLD_SIZE", 1, 1);
  w.local_rank = env_int(mpi ? "OMPI_COMM_WORLD_LOCAL_RANK" : "LOCAL_RANK", 0, 0);
  if (w.rank >= w.world_size)
    throw UserError(fmt::format("RANK {} is not below WORLD_SIZE {}", w.rank, w.world_size));
  if (const char* a = env("MASTER_ADDR")) w.master_addr = a;
  w.master_port = env_int("MASTER_PORT", 29500, 1);
  if (const char* t = env("TANDEM_JOB_TOKEN")) w.token = t;
  if (const char* b = env("TANDEM_BACKEND")) w.backend = b;
  w.restart_count = env_int("TANDEM_RESTART_COUNT", 0, 0);
  return w;
}

ProcessGroup init_process_group(const std::string& backend, Device device, collectives::Millis timeout) {
  ProcessGroup pg;
  pg.env = read_world_env();
  if (pg.env.world_size == 1) return pg;
  // The config's backend wins; the launcher's TANDEM_BACKEND is a hint,
  // followed only when it suits the device (a CPU run under a launcher that
  // saw GPUs still uses Gloo).
  std::string by_device = device.is_cuda() ? "nccl" : "gloo";
  std::string chosen = !backend.empty() ? backend : pg.env.backend == by_device ? pg.env.backend : by_device;
  if (chosen != "gloo" && chosen != "nccl")
    throw UserError(fmt::format("unknown backend '{}' (expected gloo or nccl)", chosen));
  if (chosen == "nccl" && !device.is_cuda())
    throw UserError("the nccl backend needs device = \"cuda\"; use gloo on the CPU");
  if (chosen == "gloo" && device.is_cuda())
    throw UserError("the gloo backend here runs on CPU buffers; use nccl with device = \"cuda\"");
  if (pg.env.token.empty())
    throw UserError("TANDEM_JOB_TOKEN is not set: start multi-rank jobs with `tandem launch`, or export the same "
                    "token on every rank");
  // Each attempt of a restarted job rendezvous under its own prefix, so it
  // never reads the keys an earlier attempt left in the launcher's store.
  auto tcp = collectives::connect_tcp_store(pg.env.master_addr, pg.env.master_port, pg.env.token, timeout);
  pg.store = collectives::make_prefix_store(fmt::format("attempt/{}", pg.env.restart_count), tcp);
  collectives::CommOptions options;
  options.timeout = timeout;
  // The address this rank's Gloo pairs listen on: loopback unless the ranks
  // are on different hosts, where TANDEM_HOST names this host's address.
  if (const char* host = env("TANDEM_HOST")) options.host = host;
  pg.comm = chosen == "nccl" ? collectives::make_nccl_communicator(pg.store, pg.env.rank, pg.env.world_size, device, options)
                             : collectives::make_gloo_communicator(pg.store, pg.env.rank, pg.env.world_size, options);
  log_info("rank {} of {} joined through {}:{} ({})", pg.env.rank, pg.env.world_size, pg.env.master_addr,
           pg.env.master_port, chosen);
  return pg;
}

}  // namespace tandem::parallel
