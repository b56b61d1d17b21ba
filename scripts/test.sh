#!/usr/bin/env bash
# Runs cnp's whole test suite on a fresh machine: builds the WebAssembly plugins (installing the
# wasm32-wasip2 toolchain from Debian's packages when rustup has no such target) and every binary
# the tests drive (the `cnp` service and the fake `claude` CLI), then runs unit, integration and
# end-to-end tests, and ends with one summary line over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
elapsed() { echo "$(( $(date +%s) - started )) s"; }

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A one-off build gains nothing from incremental state, which costs gigabytes of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "==> building the WebAssembly plugins (plugins/, incl. the hostile fixtures)"
scripts/build-plugins.sh
# From PyPI: aiosmtpd (a real SMTP server for the notification tests); schemathesis and
# openapi-spec-validator (the OpenAPI document checked from outside, tests/tests/openapi_e2e.rs).
echo "==> test tools: aiosmtpd, schemathesis, openapi-spec-validator"
pip_install() {
    # Plain, then per-user, then past an "externally managed" system Python (PEP 668).
    python3 -m pip install --quiet "$@" 2>/dev/null \
        || python3 -m pip install --quiet --user "$@" 2>/dev/null \
        || python3 -m pip install --quiet --user --break-system-packages "$@"
}
python3 -c 'import aiosmtpd' 2>/dev/null || pip_install aiosmtpd
python3 -c 'import schemathesis' 2>/dev/null || pip_install 'schemathesis>=4.1,<5'
python3 -c 'import openapi_spec_validator' 2>/dev/null || pip_install 'openapi-spec-validator>=0.7,<1'
# Debian packages the tests need: faketime (the shifted-clock passes below), and chromium with
# chromium-driver (the dashboard's browser tests). `apt-get update` once, only if one is missing.
missing=()
command -v faketime >/dev/null || missing+=(faketime)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
# postgresql: the store and cluster tests start a private server (tests/src/pg.rs).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
echo "==> test tools: faketime, chromium, chromium-driver, postgresql${missing:+ (installing ${missing[*]})}"
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "==> building binaries ($(elapsed))"
# The same command the end-to-end tests' support runs to find `cnp` (then a no-op).
cargo build --workspace --bins --locked
echo "==> running tests ($(elapsed))"
log="$(mktemp)"
shifted_log="$(mktemp)"
trap 'rm -f "$log" "$shifted_log"' EXIT
status=0
# pipefail: cargo's own exit status decides
cargo test --workspace --locked --no-fail-fast -- --test-threads="${CNP_TEST_THREADS:-4}" 2>&1 | tee "$log" || status=$?
# The same store, engine and notification tests on PostgreSQL: each test binary starts a private
# server (initdb + postgres on a free port, as a non-root user), one database per test.
echo "==> running the store and engine tests again on PostgreSQL ($(elapsed))"
CNP_TEST_BACKEND=postgres cargo test -p cnp-host --locked --no-fail-fast \
    --test store --test engine --test cooldown --test budget --test workflows --test sessions \
    --test notify --test worktree \
    -- --test-threads="${CNP_TEST_THREADS:-4}" 2>&1 | tee -a "$log" || status=$?
# No date may break the suite: the whole workspace again, with the test binaries (and so cnp and
# the fake CLI they start) on a system clock shifted by libfaketime. Monotonic time stays real
# (timeouts and tokio timers are unaffected); cargo itself runs on the real clock.
#   1. the last 90 s of 2027 (a year rollover during the run);
#   2. 90 s before the next DST change in America/New_York, a zone the tests schedule in.
next_dst_change() {
    python3 -c '
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo
zone = ZoneInfo("America/New_York")
t = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
offset = t.astimezone(zone).utcoffset()
while t.astimezone(zone).utcoffset() == offset:
    t += timedelta(hours=1)
print(int(t.timestamp()))'
}
for at in "$(date -u -d 2027-12-31T23:58:30Z +%s)" "$(( $(next_dst_change) - 90 ))"; do
    echo "==> running tests again with the clock at $(date -u -d "@$at" +%FT%TZ) ($(elapsed))"
    shift_s=$(( at - $(date +%s) ))
    [ "$shift_s" -ge 0 ] && shift_s="+$shift_s"
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="faketime -f $shift_s" \
        FAKETIME_DONT_FAKE_MONOTONIC=1 CNP_TEST_CLOCK_NEAR="$at" \
        cargo test --workspace --locked --no-fail-fast -- --test-threads="${CNP_TEST_THREADS:-4}" 2>&1 \
        | tee -a "$shifted_log" || status=$?
done
# The plugins' own logic, natively (each plugin enables a different SDK feature: one at a time).
for plugin in decorrelated-jitter webhook-notifier business-hours upstream-gate anthropic-messages; do
    (cd plugins && cargo test --locked -p "$plugin") 2>&1 | tee -a "$log" || status=$?
done
summary='/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }'
awk "$summary"' END { printf "shifted-clock passes: %d passed, %d failed\n", p, f }' "$shifted_log"
awk "$summary"' END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
echo "scripts/test.sh: $(elapsed) in all"
exit "$status"
