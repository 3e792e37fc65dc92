#!/usr/bin/env bash
# Makes libtorch available to this checkout and prints the folder it uses.
#
# Order of preference:
#   1. $LIBTORCH, when the user set it (for example a CUDA build of their own);
#   2. the per-user cache ($NPD_CACHE, default ${XDG_CACHE_HOME:-~/.cache}/npd),
#      filled once from the PyTorch 2.13.0 wheel on the Python package index
#      (tch 0.26 binds libtorch 2.13.0; the wheel's torch/ folder is a complete
#      libtorch with headers and shared libraries).
#
# The checkout's `.libtorch` link points at the folder, and `.cargo/config.toml`
# hands it to cargo as LIBTORCH, so plain `cargo build|test|run` work afterwards.
set -euo pipefail

TORCH_VERSION="2.13.0"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${NPD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/npd}"
prefix="$cache/torch-$TORCH_VERSION"

log() { printf 'npd: %s\n' "$*" >&2; }

if [[ -n "${LIBTORCH:-}" ]]; then
    if [[ ! -d "$LIBTORCH/lib" || ! -d "$LIBTORCH/include" ]]; then
        log "LIBTORCH=$LIBTORCH has no lib/ and include/ folders; unset it to use the cached PyTorch $TORCH_VERSION"
        exit 1
    fi
    printf '%s\n' "$LIBTORCH"
    exit 0
fi

if [[ ! -f "$prefix/torch/lib/libtorch_cpu.so" ]]; then
    py="${PYTHON:-python3}"
    if ! command -v "$py" >/dev/null 2>&1; then
        log "python3 is needed once, to fetch libtorch from the PyTorch $TORCH_VERSION wheel."
        log "Install it (Debian/Ubuntu: apt-get install python3 python3-pip), or set LIBTORCH to an existing libtorch $TORCH_VERSION."
        exit 1
    fi
    if ! "$py" -m pip --version >/dev/null 2>&1; then
        log "pip for $py is needed once, to fetch libtorch from the PyTorch $TORCH_VERSION wheel."
        log "Install it (Debian/Ubuntu: apt-get install python3-pip; elsewhere: $py -m ensurepip), or set LIBTORCH."
        exit 1
    fi
    mkdir -p "$cache"
    partial="$prefix.partial.$$"
    rm -rf "$partial"
    log "installing torch==$TORCH_VERSION into $prefix (once per user; a few GB)"
    "$py" -m pip install --quiet --no-compile --disable-pip-version-check \
        --target "$partial" "torch==$TORCH_VERSION" >&2
    # Another checkout may have finished first; either copy is complete.
    if [[ -f "$prefix/torch/lib/libtorch_cpu.so" ]]; then
        rm -rf "$partial"
    else
        rm -rf "$prefix"
        mv "$partial" "$prefix"
    fi
fi

ln -sfn "$prefix/torch" "$root/.libtorch"
printf '%s\n' "$prefix/torch"
