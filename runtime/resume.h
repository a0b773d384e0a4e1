// Continuing a run from its newest checkpoint (`tandem train --resume`).
//
// Everything a step depends on is either in the checkpoint (fp32 weights,
// the optimizer's flat state buffers, the step) or a pure function of the
// step and the seed (the data order, dropout masks, the learning rate), so
// a run resumed from step k computes exactly what the uninterrupted run
// computed after step k: the final weights are bitwise identical.
#pragma once

#include <map>
#include <optional>
#include <string>

#include "runtime/core/tensor.h"
#include "runtime/parameters.h"

namespace tandem {

struct ResumePoint {
  int64_t step = 0;
  std::string dir;                               // DIR/step_%08d
  Tensor weights;                                // fp32, flat, in the ParameterSet's layout (CPU)
  Tensor buffers;                                // fp32, flat, the ParameterSet's buffers (CPU; undefined: none)
  std::map<std::string, Tensor> optimizer_state;  // "exp_avg", ... (CPU)
};

// The newest DIR/step_* whose manifest and checksums verify; a checkpoint
// that does not is skipped with a warning naming the bad file. Nothing when
// DIR holds none (or does not exist).
std::optional<std::string> newest_valid_checkpoint(const std::string& ckpt_dir);

// Reads `step_dir` for `params`: every parameter and buffer must be there
// with its shape (UserError naming the first that is not).
ResumePoint load_resume_point(const std::string& step_dir, const ParameterSet& params);

}  // namespace tandem
