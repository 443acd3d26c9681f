#!/usr/bin/env bash
# The kit's main command: builds in release mode, then measures whether the
# event-based, asynchronous design was worth it.
#
#   ./benchmark.sh                 the homework's two lines, a table, the cost and a verdict
#                                  (about 1.5 min; the first run builds for about 1 min more)
#   ./benchmark.sh --requests 10   only the two lines, with 10 concurrent clients
#   ./benchmark.sh --full          the sweep: results/<date>/*.csv and *.svg (< 10 min)
#   ./benchmark.sh --smoke         every mode for a moment (what CI runs)
#   ./benchmark.sh --vs-nginx      the performance goals against nginx, our CPU per request beside
#                                  nginx's (about 8 min; needs nginx and wrk, without them only
#                                  the slow-storage table)
#   ./benchmark.sh --async-await   tokio beside event and event-async, then their RSS holding
#                                  10,000 idle connections (about 1 min; docs/guide/02d-async-await.md)
#   ./benchmark.sh --techniques    what each io_uring technique of uring-net buys: uring-net with
#                                  one turned off at a time, beside uring-net and event (about 7 min)
#
# Servers run on free loopback ports (--port 0) and are stopped on exit,
# on failure and on Ctrl-C. Any wrong response fails the run (exit 1).
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --workspace --locked --quiet
# exec: signals sent to this script reach the suite, which stops its servers.
# BENCHMARK_COMMAND: --help and usage errors name the command the user typed.
BENCHMARK_COMMAND=./benchmark.sh exec ./target/release/benchmark "$@"
