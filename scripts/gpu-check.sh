#!/usr/bin/env bash
# The model code on an NVIDIA GPU, as one prepared check of at most 8 minutes.
#
#   scripts/gpu-check.sh build   # here (Rust toolchain, network to PyPI and crates.io)
#   scripts/gpu-check.sh run     # on the GPU machine (Python with torch 2.11, no Rust)
#
# `build` fetches the torch 2.11.0 wheel (CUDA 13.0) from the Python package
# index without its dependencies, takes its libtorch (torch/lib, torch/include),
# and builds the `gpu_check` and `distill_openpangu` examples against it with tch 0.24 (tch 0.26 binds
# libtorch 2.13 and does not compile against 2.11; the workspace builds
# unchanged with only those two versions changed), in a temporary git worktree,
# into gpu-check/bin/. The CUDA libraries libtorch_cuda.so needs are not
# fetched: the link allows their symbols to stay unresolved, and they resolve
# on the GPU machine, from its own torch install.
#
# `run` finds the machine's torch 2.11 (python3 -c 'import torch'), runs the
# binary on its libtorch, and prints, for docs/benchmarks.md: nvidia-smi,
# what libtorch sees, logits on CUDA against CPU in f32 and bf16, cached
# greedy decoding against uncached, and bf16 training steps with
# recomputation on a randomly initialised model of openPangu-Embedded-1B's
# shape (tokens/s, the attention kernel, the peak memory nvidia-smi saw),
# then a short `distill_openpangu --quick` (SFT and NPD, 20 steps each) with
# model.device = "cuda".
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/gpu-check"
TORCH_VERSION="2.11.0"
log() { printf 'gpu-check: %s\n' "$*" >&2; }

build() {
    local cache="${NPD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/npd}"
    local wheels="$cache/wheels" prefix="$cache/torch-$TORCH_VERSION"
    if [[ ! -f "$prefix/torch/lib/libtorch_cuda.so" ]]; then
        mkdir -p "$wheels" "$prefix"
        if ! ls "$wheels"/torch-"$TORCH_VERSION"-*.whl >/dev/null 2>&1; then
            log "downloading the torch $TORCH_VERSION wheel (about 530 MB, no dependencies)"
            python3 -m pip download --quiet --no-deps --disable-pip-version-check \
                "torch==$TORCH_VERSION" -d "$wheels"
        fi
        local wheel
        wheel="$(ls "$wheels"/torch-"$TORCH_VERSION"-*.whl | head -1)"
        log "extracting libtorch from $wheel"
        python3 - "$wheel" "$prefix" <<'EOF'
import sys, zipfile
wheel, prefix = sys.argv[1], sys.argv[2]
z = zipfile.ZipFile(wheel)
keep = [n for n in z.namelist()
        if n.startswith(("torch/lib/", "torch/include/", "torch/share/")) or n == "torch/version.py"]
z.extractall(prefix, keep)
EOF
    fi
    local tree="$root/target/gpu-check-tree"
    rm -rf "$tree"
    git -C "$root" worktree prune
    git -C "$root" worktree add --detach --force "$tree" HEAD >/dev/null
    # The files as they are in this checkout, committed or not.
    git -C "$root" ls-files --modified --others --exclude-standard | while read -r f; do
        mkdir -p "$tree/$(dirname "$f")"
        cp "$root/$f" "$tree/$f"
    done
    sed -i 's/^tch = "0.26"/tch = "0.24"/; s/^torch-sys = "0.26"/torch-sys = "0.24"/' "$tree/Cargo.toml"
    (
        cd "$tree"
        rm -f .libtorch
        cargo update --quiet -p tch -p torch-sys
        LIBTORCH="$prefix/torch" \
            RUSTFLAGS="-C link-arg=-Wl,--allow-shlib-undefined" \
            CARGO_TARGET_DIR="$root/target/gpu-check" \
            cargo build --release --example gpu_check --example distill_openpangu
    )
    mkdir -p "$out/bin"
    for bin in gpu_check distill_openpangu; do
        cp "$root/target/gpu-check/release/examples/$bin" "$out/bin/"
        strip "$out/bin/$bin" 2>/dev/null || true
    done
    git -C "$root" worktree remove --force "$tree"
    log "built $out/bin/{gpu_check,distill_openpangu} against libtorch $TORCH_VERSION (tch 0.24)"
}

run() {
    local bin="$out/bin/gpu_check"
    [[ -x "$bin" ]] || { log "no $bin: run 'scripts/gpu-check.sh build' on a machine with Rust first"; exit 1; }
    local torch_lib
    torch_lib="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
    log "torch $(python3 -c 'import torch; print(torch.__version__)') at $torch_lib"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    # GPU memory in use while the checks run, sampled every 200 ms.
    local samples
    samples="$(mktemp)"
    (while sleep 0.2; do
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 >> "$samples" 2>/dev/null
    done) &
    local sampler=$!
    # The nvidia CUDA libraries of the pip install sit beside torch.
    local nvidia
    nvidia="$(find "$(dirname "$(dirname "$torch_lib")")/nvidia" -maxdepth 3 -name lib -type d 2>/dev/null | tr '\n' ':')"
    export LD_LIBRARY_PATH="$torch_lib:$nvidia${LD_LIBRARY_PATH:-}"
    local rc=0
    timeout 240 "$bin" "$@" || rc=$?
    kill "$sampler" 2>/dev/null || true
    log "peak GPU memory used (nvidia-smi, sampled every 200 ms): $(sort -n "$samples" | tail -1) MiB"

    # The embedded default prepares its teacher and warm start on the CPU,
    # then distils on the GPU.
    local scratch
    scratch="$(mktemp -d)"
    printf '[model]\ndevice = "cuda"\n' > "$scratch/cuda.toml"
    local start=$SECONDS
    timeout 240 "$out/bin/distill_openpangu" --quick --methods sft,npd \
        --config "$scratch/cuda.toml" --out "$scratch/run" --cache "$scratch/cache" \
        > "$scratch/stdout" || rc=$?
    log "distill_openpangu --quick on cuda: exit ${rc}, $((SECONDS - start)) s"
    sed -n '/^| method/,/^$/p' "$scratch/stdout"
    tail -5 "$scratch/stdout"
    return "$rc"
}

case "${1:-}" in
    build) build ;;
    run) shift; run "$@" ;;
    *) echo "usage: scripts/gpu-check.sh build | run [gpu_check options]" >&2; exit 2 ;;
esac
