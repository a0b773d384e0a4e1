// One node's launcher from its first workers' start to its exit code: it
// watches each attempt of the job, spreads failures between nodes through
// the store, and restarts the whole job up to --max-restarts times.
//
// Note [Restarts]: an attempt is one run of every worker of the job; the
// workers of attempt A see TANDEM_RESTART_COUNT=A (and `tandem train`
// resumes from its newest checkpoint that verifies when A > 0; the process
// group keeps each attempt's keys under "attempt/A", so a restarted job
// never reads the previous attempt's). When a worker fails (non-zero exit
// or a signal), its launcher publishes the failure for that attempt and
// stops its workers (Note [Stopping workers]); every other launcher sees
// the key and stops its own.
// With restarts left, each launcher prints one line naming the attempt's
// failure and meets the others at a store barrier before it starts the
// workers of attempt A+1 (same ranks, same store: node 0's launcher keeps
// serving it through every attempt). With none left, it exits with the
// job's first failure. A signal to a launcher, a lost store, a silent node
// or a node that does not come back to the barrier ends the job without
// another restart ("launch/abort").
//
// Note [Stopping workers]: once an attempt has failed (a worker's exit or
// signal, on this node or another), the launcher gives its other workers
// 500 ms to end on their own before it sends SIGTERM (with SIGCONT, for a
// stopped worker), then SIGKILL to each one still running --stop-grace
// later (LaunchPlan::stop_grace), naming it. The wait is for the ranks
// stuck in the collective that the failed one gave up on: their watchdogs
// report it within a check interval (250 ms) of each other, each naming
// the ranks it waited for (Note [Watchdog] in collectives/watchdog.h), and
// a SIGTERM at once would cut off all but the first report. A signal to
// the launcher, a lost node or a lost store stops the workers at once.
//
// Note [Lost nodes]: one timeout, --node-timeout T (LaunchPlan::node_timeout,
// the same on every node), bounds how long a launcher takes to notice that
// another node is gone. Launchers other than node 0 add to their heartbeat
// counter every T/4 (250 ms to 1 s); node 0 reads the counters as often and
// fails the job with "node I lost: no heartbeat ... for X s" once a node
// still running (not yet done with the attempt) has not moved its counter
// for T: within T plus two heartbeat periods of a launcher's death. The
// launchers' store client gives up on a request after T (its reply
// timeout), and every launcher asks the store something every kStorePoll
// while its workers run: a node cut off from node 0 (or from a store that
// stopped answering) stops its workers and exits within T plus one poll,
// naming the store and how long it waited. Neither case restarts the job:
// a lost node cannot rejoin, and a node that lost the store cannot agree on
// a restart. The workers' own timeout (tandem train's comm_timeout) is
// separate: a cut link fails their collectives after it, whichever of the
// two is shorter is seen first.
//
// Store keys (all under "launch/"; A is an attempt, I a node rank):
//   node/I              "nproc host pid" of node I's launcher (rendezvous)
//   max_restarts/I      --max-restarts of node I, which every node must share
//   node_timeout/I      --node-timeout of node I in ms, likewise
//   attempt             the attempt the job is on (moved on at each barrier)
//   failed/A            "code cause" of attempt A's first failure (first wins)
//   abort               "code cause" of what ended the job's restarts
//   done/A, done/A/I    count of, and flag per, launchers whose attempt A ended
//   ready/A, ready/A/I  count of, and flag per, launchers at the barrier before A
//   alive/I             node I's heartbeat counter (node 0 watches it)
//   gone                count of launchers (other than node 0) that have
//                       exited; node 0 keeps the store up for them
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "collectives/store.h"
#include "tools/workers.h"

namespace tandem::tools {

// The settings once flags, Slurm and defaults are combined.
// --node-timeout's default: long enough that a busy node 0 or a short
// network stall does not end a job (torchrun's agents call a node lost
// after 3 missed keep-alives 5 s apart, 15 s), short next to the 300 s a
// collective may take by default (comm_timeout).
inline constexpr Millis kDefaultNodeTimeout{30000};
// --stop-grace's default: how long a worker being stopped (another one
// failed, or the launcher got a signal) has between SIGTERM and SIGKILL,
// time enough to flush logs or finish writing a checkpoint.
inline constexpr Millis kDefaultStopGrace{10000};

struct LaunchPlan {
  int nproc = 1, nnodes = 1, node_rank = 0, master_port = 0, max_restarts = 0;
  Millis node_timeout = kDefaultNodeTimeout;  // Note [Lost nodes]
  Millis stop_grace = kDefaultStopGrace;      // SIGTERM -> SIGKILL; each node its own
  bool port_given = false;  // else one node may move off a busy default port
  std::string master_addr, backend, token, host;
};

// Starts this node's workers for one attempt (TANDEM_RESTART_COUNT=attempt).
using StartWorkers = std::function<std::unique_ptr<WorkerGroup>(int attempt)>;

// Runs the job on this node, attempt after attempt (Note [Restarts]);
// returns the launcher's exit code: 0 when an attempt succeeded on every
// node, else the job's first failure's code (128 + signal for a worker
// killed by one, or for a launcher stopped by one). `store` is null for a
// job on one node, which needs no agreement.
int run_job(const LaunchPlan& plan, std::shared_ptr<collectives::Store> store, const StartWorkers& start);

}  // namespace tandem::tools
