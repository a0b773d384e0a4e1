// The tandem command line: one binary, one subcommand per job.
//   tandem train --config FILE.toml [--set key=value ...] [--metrics-out F] [--ckpt-dir D]
//   tandem bench kernels [--json OUT.json] [--device cpu|cuda]
//   tandem data tokenize|inspect ...
// User errors print one line and exit 2; internal errors exit 1.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <new>

#include "collectives/communicator.h"
#include "runtime/core/error.h"
#include "runtime/core/log.h"
#include "tools/commands.h"

int main(int argc, char** argv) {
  if (const char* rank = std::getenv("RANK")) tandem::set_rank(std::atoi(rank));
  CLI::App app{"tandem: distributed deep-learning training on GPUs and CPUs"};
  app.require_subcommand(1);
  tandem::tools::add_train_command(app);
  tandem::tools::add_bench_command(app);
  tandem::tools::add_launch_command(app);
  tandem::tools::add_ckpt_command(app);
  tandem::tools::add_data_command(app);
  tandem::tools::add_eval_command(app);
  tandem::tools::add_generate_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {  // a missing, unknown or malformed flag: a user error like any other
    std::fprintf(stderr, "tandem: error: %s (see --help)\n", e.what());
    return 2;
  } catch (const tandem::UserError& e) {
    std::fprintf(stderr, "tandem: error: %s\n", e.what());
    return 2;
  } catch (const tandem::collectives::CollectiveError& e) {  // another rank or host failed: not a bug here
    std::fprintf(stderr, "tandem: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "tandem: error: out of host memory: the model, batch or data set does not fit in RAM\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tandem: internal error: %s\n", e.what());
    return 1;
  }
  return 0;
}
