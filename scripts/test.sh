#!/usr/bin/env bash
# Runs cnp's whole test suite on a fresh machine: builds every binary the tests drive (the `cnp`
# service and the fake `claude` CLI), then runs unit, integration and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
echo "==> building binaries"
cargo build --workspace --bins --locked
echo "==> running tests"
cargo test --workspace --locked -- --test-threads="${CNP_TEST_THREADS:-4}"
