// Each subcommand registers itself on the CLI11 app; its callback does the work.
#pragma once

#include <CLI/CLI.hpp>

namespace tandem::tools {

void add_train_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_launch_command(CLI::App& app);
void add_ckpt_command(CLI::App& app);
void add_data_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_generate_command(CLI::App& app);

}  // namespace tandem::tools
