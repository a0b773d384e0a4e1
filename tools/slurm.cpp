// Reads the SLURM_* variables `tandem launch` falls back on (see slurm.h).
#include "tools/slurm.h"

#include <cstdlib>

namespace tandem::tools {

namespace {

// The first of `names` that is set and not empty, with its name.
std::optional<std::pair<std::string, std::string>> first_set(std::initializer_list<const char*> names) {
  for (const char* name : names)
    if (const char* v = std::getenv(name); v && *v) return std::make_pair(std::string(name), std::string(v));
  return std::nullopt;
}

std::optional<int> read_count(std::initializer_list<const char*> names) {
  auto var = first_set(names);
  if (!var) return std::nullopt;
  return parse_slurm_count(var->first, var->second);
}

}  // namespace

SlurmJob read_slurm_env() {
  SlurmJob job;
  job.nnodes = read_count({"SLURM_NNODES", "SLURM_JOB_NUM_NODES"});
  job.node_rank = read_count({"SLURM_NODEID"});
  // A job asks for tasks per node, or GPUs per node with one task per node
  // (the usual way to run one launcher per node); a task count of 1 next to
  // several GPUs is the second case.
  std::optional<int> tasks = read_count({"SLURM_NTASKS_PER_NODE"});
  std::optional<int> gpus = read_count({"SLURM_GPUS_ON_NODE"});
  if (tasks && !(*tasks == 1 && gpus && *gpus > 1))
    job.nproc_per_node = tasks;
  else if (gpus && *gpus > 0)
    job.nproc_per_node = gpus;
  if (auto list = first_set({"SLURM_JOB_NODELIST", "SLURM_NODELIST"})) job.nodelist = list->second;
  return job;
}

}  // namespace tandem::tools
