// Joining a job: who am I (rank, world size, local rank), where is the
// store, and the communicator for the whole world. The environment is what
// `tandem launch` and torchrun set (RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT, TANDEM_JOB_TOKEN), or what mpirun sets
// (OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK) together with MASTER_ADDR and
// MASTER_PORT. With none of them, the process is a world of one.
// TANDEM_HOST is the address this host's Gloo connections listen on (default
// 127.0.0.1: set it on every host of a multi-host job).
#pragma once

#include <memory>
#include <string>

#include "collectives/communicator.h"
#include "collectives/store.h"

namespace tandem::parallel {

struct WorldEnv {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string token;    // TANDEM_JOB_TOKEN
  std::string backend;  // TANDEM_BACKEND, if the launcher chose one
  int restart_count = 0;  // TANDEM_RESTART_COUNT: how often the launcher restarted the job
};

// Reads the environment; throws UserError for inconsistent values
// (RANK >= WORLD_SIZE, a non-numeric port, ...).
WorldEnv read_world_env();

struct ProcessGroup {
  WorldEnv env;
  std::shared_ptr<collectives::Store> store;
  std::shared_ptr<collectives::Communicator> comm;  // null in a world of one
  int rank() const { return env.rank; }
  int size() const { return env.world_size; }
};

// Connects to the store and builds the world communicator: `backend`
// ("gloo" or "nccl") when given, else nccl on CUDA devices and gloo on the
// CPU. A world of one needs neither.
ProcessGroup init_process_group(const std::string& backend, Device device, collectives::Millis timeout);

}  // namespace tandem::parallel
