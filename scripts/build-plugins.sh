#!/usr/bin/env bash
# Builds every plugin and fixture of the plugins/ workspace to a wasm32-wasip2 component:
#   plugins/target/wasm32-wasip2/release/<crate_name>.wasm
#
# Usage: scripts/build-plugins.sh [--out DIR]
#   --out DIR   also copy each plugin (not the hostile fixtures) to DIR/<package-name>.wasm
#               (for example ~/.config/cnp/plugins), the name cnp knows the plugin by, with its
#               example sidecar <package-name>.toml when it has one and DIR has none yet.
#
# Two routes:
#   1. A rustup toolchain with the wasm32-wasip2 target installed (a developer's machine after
#      `rustup target add wasm32-wasip2`): plain `cargo build`.
#   2. Otherwise Debian's Rust (rustc-web, with the standard library's source), installed here
#      if missing: the standard library is built for the target (-Zbuild-std) and Debian's
#      linker writes components directly. Its settings live in plugins/.cargo/debian.toml.
#
# Plugins are built one `-p` at a time: each enables a different world feature of
# cnp-plugin-sdk, and cargo would unify them in a single build of the whole workspace.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
plugins="$repo/plugins"
target=wasm32-wasip2
out_dir=""

while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out_dir="${2:?--out needs a directory}"; shift 2 ;;
        -h|--help) sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-plugins: unknown argument: $1" >&2; exit 2 ;;
    esac
done

debian_packages=(rustc-web cargo-web rust-web-src rust-web-llvm lld-22 wasi-libc)

have_rustup_target() {
    command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx "$target"
}

install_debian_toolchain() {
    local missing=()
    for pkg in "${debian_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "build-plugins: no rustup toolchain with $target and no apt-get for Debian's Rust;" \
            "run \`rustup target add $target\` and try again" >&2
        exit 1
    fi
    echo "build-plugins: installing Debian packages: ${missing[*]}" >&2
    local sudo=()
    [[ $(id -u) -ne 0 ]] && sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${debian_packages[@]}"
}

# The workspace members as "<dir> <package-name>" lines, in workspace order.
members() {
    sed -n '/^members = \[/,/^\]/p' "$plugins/Cargo.toml" | grep -o '"[^"]*"' | tr -d '"' |
        while read -r dir; do
            echo "$dir $(sed -n 's/^name = "\(.*\)"$/\1/p' "$plugins/$dir/Cargo.toml" | head -n 1)"
        done
}

cd "$plugins"
if have_rustup_target; then
    echo "build-plugins: using rustup's $target target" >&2
    cargo_cmd=(cargo build --release --target "$target" --target-dir "$plugins/target")
else
    install_debian_toolchain
    echo "build-plugins: using Debian's rustc-web with -Zbuild-std" >&2
    # /usr/bin/cargo by absolute path: rustup's cargo usually comes first in PATH, and a
    # different compiler cannot build Debian's standard library source.
    cargo_cmd=(env RUSTC_BOOTSTRAP=1 /usr/bin/cargo build --release --target "$target"
        --target-dir "$plugins/target" --config "$plugins/.cargo/debian.toml")
fi

mapfile -t members < <(members)
for member in "${members[@]}"; do
    pkg="${member#* }"
    echo "build-plugins: building $pkg" >&2
    "${cargo_cmd[@]}" -p "$pkg"
done

release="$plugins/target/$target/release"
echo
echo "Built components ($release):"
for member in "${members[@]}"; do
    dir="${member%% *}" pkg="${member#* }"
    wasm="$release/${pkg//-/_}.wasm"
    if [[ ! -f "$wasm" ]]; then
        echo "build-plugins: $wasm is missing after the build" >&2
        exit 1
    fi
    # A component starts with \0asm and version 0d 00 01 00 (a core module has 01 00 00 00).
    if [[ "$(head -c 8 "$wasm" | od -An -tx1 | tr -d ' \n')" != "0061736d0d000100" ]]; then
        echo "build-plugins: $wasm is not a WebAssembly component" >&2
        exit 1
    fi
    printf '  %-28s %8s bytes\n' "$(basename "$wasm")" "$(stat -c %s "$wasm")"
    if [[ -n "$out_dir" && "$dir" != fixtures/* ]]; then
        mkdir -p "$out_dir"
        cp "$wasm" "$out_dir/$pkg.wasm"
        # An example sidecar (<dir>/<package-name>.toml) goes along, unless one is there already.
        sidecar="$plugins/$dir/$pkg.toml"
        if [[ -f "$sidecar" && ! -e "$out_dir/$pkg.toml" ]]; then
            cp "$sidecar" "$out_dir/$pkg.toml"
        fi
    fi
done
[[ -n "$out_dir" ]] && echo "Copied the plugins (not the fixtures) to $out_dir as <package-name>.wasm"
exit 0
