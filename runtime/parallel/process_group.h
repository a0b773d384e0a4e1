// Joining a job: who am I (rank, world size, local rank), where is the
// store, and the communicator for the whole world. The environment is what
// `tandem launch` and torchrun set (RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT, TANDEM_JOB_TOKEN), or what mpirun sets
// (OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK) together with MASTER_ADDR and
// MASTER_PORT. With none of them, the process is a world of one.
// TANDEM_HOST is the address this host's Gloo connections listen on (default
// 127.0.0.1: set it on every host of a multi-host job).
//
// Note [Rank 0 serves the store]
// Under `tandem launch`, node 0's launcher serves the store on MASTER_PORT.
// A job started without it (each rank by hand or by a script, as torchrun
// users do with env:// init, or by mpirun) has no launcher, so rank 0 serves
// the store itself, as PyTorch's TCPStore does with is_master: it listens on
// MASTER_PORT (on loopback when MASTER_ADDR is a loopback address, else on
// every interface, as the launcher does) and then connects to it like every
// other rank. The other ranks retry their connection until the rendezvous
// timeout, so they may start before rank 0. A worker knows it runs under the
// launcher by TANDEM_RESTART_COUNT, which the launcher sets for every worker
// of every attempt (0 for the first) and which nothing else sets; so never
// export it by hand.
// Rank 0's process exits, and its server goes, while the others may still
// be finishing their last store requests; so when the process group goes,
// every other rank reports that it is done with the store and rank 0 keeps
// serving until all have (at most the rendezvous timeout, or a few seconds
// when it leaves on an error), then stops the server.
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
  // TANDEM_RESTART_COUNT is set: `tandem launch` serves the store, not rank 0
  // (Note [Rank 0 serves the store]).
  bool launched = false;
};

// Reads the environment; throws UserError for inconsistent values
// (RANK >= WORLD_SIZE, a non-numeric port, ...).
WorldEnv read_world_env();

// A job's store without a launcher (Note [Rank 0 serves the store]): rank 0's
// holds the server; each rank's reports at its end that it is done with it.
class StoreHost;

struct ProcessGroup {
  // Declared first, so it goes last: after the communicator, which may still
  // use the store as it goes.
  std::shared_ptr<StoreHost> store_host;  // null under `tandem launch` and in a world of one
  WorldEnv env;
  std::shared_ptr<collectives::Store> store;
  std::shared_ptr<collectives::Communicator> comm;  // null in a world of one
  int rank() const { return env.rank; }
  int size() const { return env.world_size; }
};

// Connects to the store (rank 0 of a job without a launcher serves it first)
// and builds the world communicator: `backend` ("gloo" or "nccl") when
// given, else nccl on CUDA devices and gloo on the CPU. A world of one needs
// neither. `timeout` bounds the rendezvous: connecting to the store and
// waiting for every rank.
ProcessGroup init_process_group(const std::string& backend, Device device, collectives::Millis timeout);

}  // namespace tandem::parallel
