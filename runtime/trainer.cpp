#include "runtime/trainer.h"

#include <fmt/format.h>

#include <chrono>
#include <cstring>

#include "runtime/checkpoint.h"
#include "runtime/core/log.h"
#include "runtime/layers.h"
#include "runtime/metrics.h"
#include "runtime/optimizer.h"
#include "runtime/parallel/ddp.h"
#include "runtime/resume.h"
#include "runtime/classifier_task.h"

namespace tandem {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

Tensor make_scalar_i32(int32_t value, Device device) {
  Tensor t = Tensor::empty({1}, DType::i32, Device::cpu());
  t.data_as<int32_t>()[0] = value;
  return device.is_cuda() ? t.to(device) : t;
}

int32_t read_scalar_i32(const Tensor& t) {
  Tensor host = t.device().is_cpu() ? t : t.to(Device::cpu());
  return host.data_as<int32_t>()[0];
}

// `path` for rank 0; "trace-rank3.json" for rank 3 of "trace.json".
std::string rank_path(const std::string& path, int rank) {
  if (rank == 0) return path;
  size_t dot = path.rfind('.'), slash = path.rfind('/');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return fmt::format("{}-rank{}", path, rank);
  return fmt::format("{}-rank{}{}", path.substr(0, dot), rank, path.substr(dot));
}

std::vector<NamedTensor> model_tensors(const ParameterSet& params, const Optimizer& opt) {
  std::vector<NamedTensor> out;
  Tensor weights = opt.weights();  // fp32 whatever the compute dtype
  for (const Parameter& p : params.list()) out.push_back({p.name, to_file_layout(p, weights.view(p.offset, p.shape))});
  for (const Parameter& b : params.buffer_list()) out.push_back({b.name, b.value});
  return out;
}

// The device, dtype, stream and seed a run computes with; checks that the
// config's device exists.
Context make_context(const TrainConfig& config, const parallel::WorldEnv& world) {
  Context ctx;
  ctx.device = resolve_device(config.device);
  ctx.dtype = parse_dtype(config.dtype);
  if (ctx.device.is_cuda()) {
    require_cuda(fmt::format("device = \"{}\"", config.device).c_str());
    // One GPU per local rank when the config names no index.
    if (config.device == "cuda" || config.device == "auto") ctx.device.index = world.local_rank;
    if (ctx.device.index >= cuda_device_count())
      throw UserError(fmt::format("device cuda:{} does not exist ({} CUDA devices visible)", ctx.device.index,
                                  cuda_device_count()));
    set_current_device(ctx.device);
  } else if (ctx.dtype != DType::f32) {
    throw UserError(fmt::format("dtype = \"{}\" needs device = \"cuda\"; the CPU path trains in f32", config.dtype));
  }
  ctx.stream = Stream::create(ctx.device);
  ctx.seed = static_cast<uint64_t>(config.seed);
  return ctx;
}

// Rank 0's initial weights on every rank, after checking that all ranks
// built the same model.
Tensor initial_weights(const ParameterSet& params, const Context& ctx, const parallel::ProcessGroup& pg,
                       collectives::Millis timeout) {
  Tensor init = params.initial_values(ctx.seed);
  if (!pg.comm) return init;
  parallel::check_same_parameters(params, ctx.dtype, *pg.comm, *pg.store, timeout);
  if (ctx.device.is_cuda() && std::string(pg.comm->backend()) == "nccl") init = init.to(ctx.device);
  parallel::broadcast_from_rank0(init, *pg.comm, timeout);
  return init;
}

// Rank 0 finds and reads the checkpoint to resume from (outputs.resume:
// "none", "auto" for the newest valid one in the checkpoint directory, or a
// step directory); its step and weights reach the other ranks by broadcast.
// Step 0 when there is none.
ResumePoint resume_point(const TrainOutputs& outputs, const ParameterSet& params, const parallel::ProcessGroup& pg,
                         Device comm_device, collectives::Millis timeout) {
  ResumePoint r;
  if (outputs.resume.empty() || outputs.resume == "none") return r;
  if (pg.rank() == 0) {
    std::optional<std::string> dir =
        outputs.resume == "auto" ? newest_valid_checkpoint(outputs.ckpt_dir) : std::optional(outputs.resume);
    if (dir) {
      r = load_resume_point(*dir, params);
      log_info("resuming from {} (step {})", *dir, r.step);
    } else {
      log_info("no checkpoint to resume from in '{}': starting at step 0", outputs.ckpt_dir);
    }
  }
  if (!pg.comm) return r;
  Tensor step = make_scalar_i32(static_cast<int32_t>(r.step), comm_device);
  pg.comm->broadcast(collectives::Buffer::of(step), 0)->wait(timeout);
  r.step = read_scalar_i32(step);
  if (r.step == 0) return r;
  Tensor weights = pg.rank() == 0 ? r.weights : Tensor::zeros({params.numel()}, DType::f32, Device::cpu());
  if (comm_device.is_cuda()) weights = weights.to(comm_device);
  pg.comm->broadcast(collectives::Buffer::of(weights), 0)->wait(timeout);
  r.weights = weights;
  return r;
}

}  // namespace

TrainSummary train(const TrainConfig& config, Module& model, ParameterSet& params, TrainTask& task,
                   const TrainOutputs& outputs, const parallel::ProcessGroup& pg) {
  Context ctx = make_context(config, pg.env);
  auto timeout = collectives::Millis(static_cast<int64_t>(config.comm_timeout * 1000));
  bool leader = pg.rank() == 0;  // rank 0 logs, writes metrics and checkpoints

  Tensor init = initial_weights(params, ctx, pg, timeout);
  Device comm_device = pg.comm && std::string(pg.comm->backend()) == "nccl" ? ctx.device : Device::cpu();
  ResumePoint resume = resume_point(outputs, params, pg, comm_device, timeout);
  if (resume.step > 0) init = resume.weights;
  params.allocate(ctx.device, ctx.dtype, init);
  OptimizerConfig oc{config.optimizer, static_cast<float>(config.weight_decay), static_cast<float>(config.momentum),
                     config.nesterov, static_cast<float>(config.beta1), static_cast<float>(config.beta2),
                     static_cast<float>(config.eps)};
  Optimizer optimizer(params, oc, init);
  init = Tensor();
  if (resume.buffers.defined()) params.buffer_values().copy_from(resume.buffers);  // rank 0's (see evaluate)
  if (resume.step > 0) {
    if (leader) optimizer.load_state(resume.optimizer_state, resume.step);
    optimizer.set_steps_taken(resume.step);
    if (pg.comm)  // the state buffers live where the communicator's buffers do
      for (auto& [name, buffer] : optimizer.state()) pg.comm->broadcast(collectives::Buffer::of(buffer), 0)->wait(timeout);
  }

  // Micro-batches: batch_size per rank, grad_accum_steps of them per step.
  int64_t accum = config.grad_accum_steps;
  int64_t steps_per_epoch = task.batches_per_epoch() / accum;
  if (steps_per_epoch == 0)
    throw UserError(fmt::format("batch_size {} x grad_accum_steps {} x {} ranks exceeds the training data",
                                config.batch_size, accum, pg.size()));
  int64_t total_steps = config.max_steps > 0 ? config.max_steps : config.epochs * steps_per_epoch;
  int64_t global_batch = task.units_per_batch() * accum * pg.size();  // samples or tokens per step
  LrSchedule schedule{static_cast<float>(config.lr), config.warmup_steps, total_steps,
                      static_cast<float>(config.min_lr_ratio), config.lr_schedule == "cosine"};
  if (leader)
    log_info("training {} ({} parameters) on {} x {} in {}: {} steps of {} {}, {} per epoch", config.model,
             params.count(), pg.size(), ctx.device.str(), config.dtype, total_steps, global_batch, task.unit(),
             steps_per_epoch);

  std::unique_ptr<parallel::Reducer> reducer;
  bool sync_grads = false;  // false on micro-steps that only accumulate (no_sync)
  if (pg.comm) {
    parallel::DdpOptions ddp{config.bucket_cap_mb, std::min(1.0, config.bucket_cap_mb), timeout,
                             config.grad_compression == "none" ? DType::f32 : parse_dtype(config.grad_compression)};
    reducer = std::make_unique<parallel::Reducer>(params, pg.comm, ddp);
    ctx.grad_ready = [&](const Parameter& p) {
      if (sync_grads) reducer->grad_ready(p, ctx.stream);
    };
  }

  MetricsLog metrics(leader ? outputs.metrics_out : "");
  std::unique_ptr<TraceWriter> trace;
  if (!outputs.trace_out.empty()) {
    trace = std::make_unique<TraceWriter>(pg.rank());
    ctx.trace = trace.get();
  }
  CrossEntropyLoss loss_fn;
  GradClipper clipper(ctx.device);
  TrainSummary summary;
  auto run_start = Clock::now(), interval_start = run_start;
  int64_t interval_steps = 0;
  double interval_comm_ms = 0, interval_exposed_ms = 0;

  auto evaluate = [&](int64_t step) {
    // Buffers (batch norm's running statistics) are rank 0's on every rank,
    // as under PyTorch DDP's broadcast_buffers: rank 0 tracks its own
    // batches, the others take its values before they read them.
    if (pg.comm && params.buffer_numel() > 0) {
      ctx.stream.synchronize();
      parallel::broadcast_from_rank0(params.buffer_values(), *pg.comm, timeout);
    }
    summary.eval = task.evaluate(model, ctx, pg);
    nlohmann::json record = {{"step", step}, {"epoch", (step - 1) / steps_per_epoch}};
    record.update(summary.eval);
    metrics.write(record);
    if (leader) log_info("step {}: {}", step, summary.eval.dump());
  };
  auto checkpoint = [&](int64_t step) {
    ctx.stream.synchronize();
    CheckpointData data{step, model_tensors(params, optimizer), {}, nlohmann::json::object(), outputs.checkpoint_files};
    for (auto& [name, t] : optimizer.state()) data.optimizer.push_back({name, t});
    data.info = {{"config", to_toml(config)}, {"optimizer_steps", optimizer.steps_taken()},
                 {"data_cursor", {{"next_step", step}}}, {"seed", config.seed}, {"world_size", pg.size()}};
    summary.checkpoint = save_checkpoint(outputs.ckpt_dir, data);
    keep_newest_checkpoints(outputs.ckpt_dir, outputs.keep);
    log_info("wrote checkpoint {}", summary.checkpoint);
  };

  if (resume.step >= total_steps && leader)
    log_info("the checkpoint is at step {}, which ends this run ({} steps): nothing to train", resume.step, total_steps);
  for (int64_t step = resume.step; step < total_steps; step++) {
    int64_t done = step + 1;
    bool last = done == total_steps;
    bool log_now = done % config.log_every == 0 || last;
    double local_loss = 0;  // mean over this rank's micro-batches, when logging
    params.zero_grads(ctx.stream);
    for (int64_t micro = 0; micro < accum; micro++) {
      task.load(step * accum + micro, ctx);
      ctx.rng_offset = static_cast<uint64_t>(step) << 32;  // each step's own Philox counters
      ctx.batch_slot = micro * pg.size() + pg.rank();
      ctx.batch_slots = accum * pg.size();
      sync_grads = reducer && micro == accum - 1;
      if (sync_grads) reducer->prepare();
      Tensor logits = model.forward(task.inputs(), ctx);
      loss_fn.forward(logits.reshape(rows_by_last(logits)), task.targets(), ctx);
      model.backward(loss_fn.backward(ctx, 1.f / static_cast<float>(accum)), ctx);
      if (log_now) local_loss += loss_fn.mean(ctx) / static_cast<double>(accum);
    }
    if (reducer) {
      parallel::ReduceTimes t = reducer->finish(ctx.stream, trace.get());
      interval_comm_ms += t.comm_ms;
      interval_exposed_ms += t.exposed_ms;
    }
    ClipResult clip = config.grad_clip > 0 ? clipper.compute(params, static_cast<float>(config.grad_clip), ctx.stream)
                                           : ClipResult{0.0, 1.f};
    float lr = schedule.at(step);
    optimizer.step(lr, clip.scale, ctx.stream);
    interval_steps++;

    if (log_now) {
      ctx.stream.synchronize();
      summary.final_loss = pg.comm ? parallel::mean_over_ranks(local_loss, ctx.device, *pg.comm, timeout) : local_loss;
      double elapsed = seconds_since(interval_start);
      double step_ms = 1000.0 * elapsed / interval_steps;
      double units_per_s = interval_steps * global_batch / elapsed;
      nlohmann::json record = {{"step", done},
                               {"epoch", step / steps_per_epoch},
                               {"loss", summary.final_loss},
                               {"lr", lr},
                               {fmt::format("{}_per_s", task.unit()), units_per_s},
                               {"step_ms", step_ms},
                               {"world_size", pg.size()},
                               {"comm_ms", interval_comm_ms / interval_steps},
                               {"exposed_comm_ms", interval_exposed_ms / interval_steps}};
      if (config.grad_clip > 0) record["grad_norm"] = clip.norm;
      metrics.write(record);
      if (outputs.progress && leader) {
        double eta = seconds_since(run_start) / (done - resume.step) * (total_steps - done);
        log_info("step {:>6}/{} | epoch {} | loss {:.4f} | lr {:.2e} | {:.0f} {}/s | {:.2f} ms/step | ETA {}",
                 done, total_steps, step / steps_per_epoch, summary.final_loss, lr, units_per_s, task.unit(), step_ms,
                 format_duration(eta));
      }
      interval_start = Clock::now();
      interval_steps = 0;
      interval_comm_ms = interval_exposed_ms = 0;
    }
    // Evaluation and checkpoints stay out of the throughput figures.
    auto pause = Clock::now();
    bool epoch_end = done % steps_per_epoch == 0;
    if ((config.eval_every > 0 ? done % config.eval_every == 0 : epoch_end) || last) evaluate(done);
    if (leader && !outputs.ckpt_dir.empty() && ((config.ckpt_every > 0 && done % config.ckpt_every == 0) || last))
      checkpoint(done);
    interval_start += Clock::now() - pause;
  }
  summary.steps = total_steps;
  summary.seconds = seconds_since(run_start);
  if (trace) trace->write(rank_path(outputs.trace_out, pg.rank()));
  return summary;
}

}  // namespace tandem

namespace tandem {

TrainSummary train_classifier(const TrainConfig& config, Module& model, ParameterSet& params,
                              const ImageDataset& train, const ImageDataset& test, const TrainOutputs& outputs,
                              const parallel::ProcessGroup& pg) {
  AugmentOptions augment{.crop_padding = config.random_crop_padding, .hflip = config.random_hflip};
  ClassifierTask task(train, test, config.batch_size, static_cast<uint64_t>(config.seed), pg, augment);
  return tandem::train(config, model, params, task, outputs, pg);
}

}  // namespace tandem
