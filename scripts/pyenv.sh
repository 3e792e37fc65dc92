#!/usr/bin/env bash
# A Python environment for the fixture scripts: the project's own PyTorch
# (from scripts/libtorch.sh) plus transformers, safetensors and
# sentencepiece (models and tokenizers), pyarrow (a parquet prompts file), in
# a venv under the npd cache. Prints the venv's python.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${NPD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/npd}"
venv="$cache/fixtures-venv"
packages=(transformers==5.24.0 safetensors==0.8.0 sentencepiece==0.2.3 numpy pyarrow==22.0.0)

torch_lib="$("$root/scripts/libtorch.sh")"
if [[ ! -f "$torch_lib/__init__.py" ]]; then
    echo "npd: the fixture scripts need the PyTorch wheel's torch package; LIBTORCH=$torch_lib is not one" >&2
    exit 1
fi
site="$(dirname "$torch_lib")"
py="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import transformers, sentencepiece, safetensors, pyarrow" 2>/dev/null; then
    echo "npd: creating $venv (${packages[*]})" >&2
    "$py" -m venv "$venv" >&2
    purelib="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    # The torch install lives in the libtorch cache; the venv sees it through a .pth file.
    echo "$site" > "$purelib/npd-torch.pth"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${packages[@]}" >&2
fi
printf '%s\n' "$venv/bin/python"
