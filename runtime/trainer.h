// The training loop: load a batch, forward, loss, backward (all-reducing
// gradient buckets as they fill), clip, step, log, evaluate, checkpoint. What
// it trains on is a TrainTask (runtime/train_task.h): images for the MLP,
// token files for GPT-2.
#pragma once

#include <map>
#include <string>

#include "runtime/config.h"
#include "runtime/idx_dataset.h"
#include "runtime/module.h"
#include "runtime/parameters.h"
#include "runtime/parallel/process_group.h"
#include "runtime/train_task.h"

namespace tandem {

struct TrainOutputs {
  std::string metrics_out;  // JSON lines; empty: none
  std::string ckpt_dir;     // checkpoints; empty: none
  bool progress = true;     // the progress line on stderr
  std::string trace_out;    // a Chrome/Perfetto trace; ranks > 0 write FILE with "-rank<R>" before its extension
  std::string resume = "none";  // "none", "auto" (newest valid checkpoint in ckpt_dir) or a step directory
  int keep = 0;                 // checkpoints to keep, newest first (0: all)
  std::map<std::string, std::string> checkpoint_files = {};  // more files in every checkpoint (GPT-2: config.json)
};

struct TrainSummary {
  int64_t steps = 0;
  double final_loss = 0;     // mean loss of the last logged step
  nlohmann::json eval = nlohmann::json::object();  // the last evaluation's fields
  double seconds = 0;
  std::string checkpoint;    // the last one written, if any
};

// Trains `model` on `task`. The model's parameters are `params` (not yet
// allocated: the trainer places them on the device). With a communicator in
// `pg`, this is one rank of a data-parallel job: every rank trains on its
// slice of each global batch and gradients are averaged
// (runtime/parallel/ddp.h); rank 0 logs and checkpoints.
TrainSummary train(const TrainConfig& config, Module& model, ParameterSet& params, TrainTask& task,
                   const TrainOutputs& outputs, const parallel::ProcessGroup& pg = {});

// train() on a ClassifierTask: `model` maps (B, features) to (B, classes).
TrainSummary train_classifier(const TrainConfig& config, Module& model, ParameterSet& params,
                              const ImageDataset& train, const ImageDataset& test, const TrainOutputs& outputs,
                              const parallel::ProcessGroup& pg = {});

}  // namespace tandem
