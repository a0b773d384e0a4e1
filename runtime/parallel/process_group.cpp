#include "runtime/parallel/process_group.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <cstdlib>
#include <exception>

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

// How long rank 0 keeps serving for ranks that have not reported their end
// when it leaves on an exception: they are failing too, or gone.
constexpr collectives::Millis kDepartureWaitOnError{5000};

bool is_loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.starts_with("127.");
}

// Where rank 0's server listens, and the address rank 0 itself reaches it
// at: never through MASTER_ADDR, which may name this host by an address it
// cannot reach itself at (or resolve differently here).
struct ServeAddress {
  std::string listen, self;
};

ServeAddress serve_address(const std::string& master_addr) {
  if (master_addr == "localhost") return {"127.0.0.1", "127.0.0.1"};
  if (is_loopback(master_addr)) return {master_addr, master_addr};
  if (master_addr.find(':') != std::string::npos) return {"::", "::1"};  // an IPv6 address
  return {"0.0.0.0", "127.0.0.1"};
}

std::unique_ptr<collectives::TcpStoreServer> serve_store(const WorldEnv& w, const std::string& listen) {
  try {
    return std::make_unique<collectives::TcpStoreServer>(listen, w.master_port, w.token);
  } catch (const UserError& e) {
    throw UserError(fmt::format("MASTER_PORT {}: {}; rank 0 serves the store of a job started without `tandem "
                                "launch`, so the port must be free on its host (is another job, or another rank 0, "
                                "using it?): export a free MASTER_PORT on every rank",
                                w.master_port, e.what()));
  }
}

}  // namespace

// Note [Rank 0 serves the store] in the header. Keys, under the attempt's
// prefix: "done/<rank>" from each rank but 0, "done" counting them, and
// "all_done", set by the last of them, which rank 0 waits for.
class StoreHost {
 public:
  StoreHost(std::unique_ptr<collectives::TcpStoreServer> server, std::shared_ptr<collectives::Store> store,
            const WorldEnv& env, collectives::Millis timeout)
      : server_(std::move(server)), store_(std::move(store)), rank_(env.rank), size_(env.world_size),
        timeout_(timeout) {}
  StoreHost(const StoreHost&) = delete;
  StoreHost& operator=(const StoreHost&) = delete;

  ~StoreHost() {
    if (server_) {
      stop_serving();
      return;
    }
    // Best effort: a rank 0 that is gone stops serving anyway.
    try {
      store_->set(fmt::format("done/{}", rank_), collectives::to_bytes("1"));
      if (store_->add("done", 1) == size_ - 1) store_->set("all_done", collectives::to_bytes("1"));
    } catch (const std::exception& e) {
      log_warn("rank {} could not tell rank 0 it is done with the store: {}", rank_, e.what());
    }
  }

 private:
  // Waits for every other rank to be done with the store, then stops it.
  void stop_serving() {
    collectives::Millis wait = std::uncaught_exceptions() > 0 ? std::min(timeout_, kDepartureWaitOnError) : timeout_;
    try {
      store_->wait({"all_done"}, wait);
    } catch (const collectives::StoreTimeout&) {
      std::string missing;
      try {
        for (int r = 1; r < size_; r++)
          if (!store_->check({fmt::format("done/{}", r)})) missing += fmt::format(" {}", r);
      } catch (const std::exception&) {
        missing = " (unknown)";
      }
      log_warn("rank 0 stops serving the store; ranks that did not finish with it within {:.1f} s:{}",
               wait.count() / 1000.0, missing);
    } catch (const std::exception& e) {
      log_warn("rank 0 stops serving the store: {}", e.what());
    }
  }

  std::unique_ptr<collectives::TcpStoreServer> server_;  // rank 0's only
  std::shared_ptr<collectives::Store> store_;
  int rank_, size_;
  collectives::Millis timeout_;
};

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
  w.launched = env("TANDEM_RESTART_COUNT") != nullptr;
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
  // Without a launcher, rank 0 serves the store (Note [Rank 0 serves the store]).
  std::unique_ptr<collectives::TcpStoreServer> server;
  std::string store_addr = pg.env.master_addr;
  if (!pg.env.launched && pg.env.rank == 0) {
    ServeAddress at = serve_address(pg.env.master_addr);
    server = serve_store(pg.env, at.listen);
    store_addr = at.self;
    log_info("rank 0 serves the store on {}:{} (no `tandem launch`)",
             at.listen.find(':') == std::string::npos ? at.listen : "[" + at.listen + "]", pg.env.master_port);
  }
  std::shared_ptr<collectives::Store> tcp;
  try {
    tcp = collectives::connect_tcp_store(store_addr, pg.env.master_port, pg.env.token, timeout);
  } catch (const UserError& e) {
    if (!pg.env.launched) throw;
    throw UserError(fmt::format("{} (TANDEM_RESTART_COUNT is set, so this rank expects `tandem launch` to serve the "
                                "store; unset it in a job started by hand, whose rank 0 serves the store)",
                                e.what()));
  }
  // Each attempt of a restarted job rendezvous under its own prefix, so it
  // never reads the keys an earlier attempt left in the launcher's store.
  pg.store = collectives::make_prefix_store(fmt::format("attempt/{}", pg.env.restart_count), tcp);
  if (!pg.env.launched)
    pg.store_host = std::make_shared<StoreHost>(std::move(server), pg.store, pg.env, timeout);
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
