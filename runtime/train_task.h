// What a training run trains on and how it is judged: the batches, one per
// micro-step, and an evaluation. The loop in runtime/trainer.h is the same
// for every task; a task only says where inputs and targets come from.
//
// load(index) must be a pure function of (index, rank, world size, seed):
// a run resumed at step k then reads exactly the batches the uninterrupted
// run read after step k, with no data-loader state in the checkpoint.
#pragma once

#include <nlohmann/json.hpp>

#include "runtime/module.h"
#include "runtime/parallel/process_group.h"

namespace tandem {

class TrainTask {
 public:
  virtual ~TrainTask() = default;

  // This rank's micro-batches in one pass over the training data (an epoch).
  virtual int64_t batches_per_epoch() const = 0;
  // Loads this rank's micro-batch `index` (counted from the run's start) to
  // ctx's device; inputs() and targets() hold it until the next load.
  virtual void load(int64_t index, Context& ctx) = 0;
  virtual const Tensor& inputs() const = 0;   // what the model's forward takes
  virtual const Tensor& targets() const = 0;  // i32, one per row of the model's output (..., classes)

  // Throughput unit: "samples" (images) or "tokens", and how many of them one micro-batch holds.
  virtual const char* unit() const = 0;
  virtual int64_t units_per_batch() const = 0;

  // Evaluates `model` (every rank calls it; it may use pg's communicator);
  // returns the fields of the metrics record, e.g. {"test_accuracy": 0.89}.
  virtual nlohmann::json evaluate(Module& model, Context& ctx, const parallel::ProcessGroup& pg) = 0;
};

}  // namespace tandem
