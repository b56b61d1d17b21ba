#!/usr/bin/env bash
# Runs cnp's whole test suite on a fresh machine: builds the WebAssembly plugins (installing the
# wasm32-wasip2 toolchain from Debian's packages when rustup has no such target) and every binary
# the tests drive (the `cnp` service and the fake `claude` CLI), then runs unit, integration and
# end-to-end tests, and ends with one summary line over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
echo "==> building the WebAssembly plugins (plugins/, incl. the hostile fixtures)"
scripts/build-plugins.sh
echo "==> test tools: aiosmtpd (a real SMTP server for the notification tests)"
if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
    # Plain, then per-user, then past an "externally managed" system Python (PEP 668).
    python3 -m pip install --quiet aiosmtpd 2>/dev/null \
        || python3 -m pip install --quiet --user aiosmtpd 2>/dev/null \
        || python3 -m pip install --quiet --user --break-system-packages aiosmtpd
fi
echo "==> building binaries"
cargo build --workspace --bins --locked
echo "==> running tests"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
# pipefail: cargo's own exit status decides
cargo test --workspace --locked --no-fail-fast -- --test-threads="${CNP_TEST_THREADS:-4}" 2>&1 | tee "$log" || status=$?
# The plugins' own logic, natively (each plugin enables a different SDK feature: one at a time).
for plugin in decorrelated-jitter webhook-notifier business-hours; do
    (cd plugins && cargo test --locked -p "$plugin") 2>&1 | tee -a "$log" || status=$?
done
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
