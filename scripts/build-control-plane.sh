#!/usr/bin/env bash
# Build a real Kubernetes 1.20 control plane (kube-apiserver + kube-controller-manager) from
# Debian's `kubernetes` source package and cache the two binaries. Idempotent: when the cached
# binaries exist and run, it does nothing.
#
#   bash scripts/build-control-plane.sh
#
# Cache: ${TIERSERVE_CACHE:-$HOME/.cache/tierserve}/k8s/bin/{kube-apiserver,kube-controller-manager}
# Build dir: ${TIERSERVE_CACHE:-$HOME/.cache/tierserve}/k8s/build (never inside the repo).
# First build takes ~5-10 min on 2 cores. The tests' control-plane fixture uses these binaries,
# etcd from Debian's etcd-server, and kubectl from PATH.
set -euo pipefail

CACHE="${TIERSERVE_CACHE:-$HOME/.cache/tierserve}/k8s"
BIN="$CACHE/bin"
BUILD="$CACHE/build"
TARGETS=(kube-apiserver kube-controller-manager)
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

step() { printf '==> [build-control-plane] %s\n' "$*"; }
die() { printf 'ERROR [build-control-plane]: %s\n' "$*" >&2; exit 1; }

cached_ok() {
  local t
  for t in "${TARGETS[@]}"; do
    [ -x "$BIN/$t" ] && "$BIN/$t" --version >/dev/null 2>&1 || return 1
  done
}

if cached_ok; then
  step "cached binaries present and working in $BIN; nothing to do"
  for t in "${TARGETS[@]}"; do step "  $t: $("$BIN/$t" --version)"; done
  exit 0
fi

ensure_deb_src() {
  # Debian's own sources for bookworm main, so `apt-get source kubernetes` can find the package.
  if apt-get source --print-uris kubernetes >/dev/null 2>&1; then
    return 0
  fi
  step "adding deb-src for bookworm main (/etc/apt/sources.list.d/tierserve-debsrc.sources)"
  $SUDO tee /etc/apt/sources.list.d/tierserve-debsrc.sources >/dev/null <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  $SUDO apt-get update -qq
}

ensure_packages() {
  local need=() p
  for p in golang-go jq rsync dpkg-dev etcd-server golang-github-modern-go-reflect2-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if [ "${#need[@]}" -gt 0 ]; then
    step "installing Debian packages: ${need[*]}"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    step "Debian packages already installed"
  fi
}

quiet_etcd_service() {
  # The etcd-server package may start a service on 2379/2380; the tests run their own etcd on
  # free ports, but don't leave a stray one running either. Works with or without systemd.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
  elif command -v service >/dev/null 2>&1; then
    $SUDO service etcd stop >/dev/null 2>&1 || true
  fi
}

fetch_source() {
  # -> prints the unpacked source dir
  local src
  src="$(find "$BUILD" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)"
  if [ -z "$src" ]; then
    step "fetching Debian source package 'kubernetes' into $BUILD" >&2
    (cd "$BUILD" && apt-get source -qq kubernetes >&2) || die "apt-get source kubernetes failed"
    src="$(find "$BUILD" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)"
    [ -n "$src" ] || die "no kubernetes-* dir after apt-get source in $BUILD"
  else
    step "reusing unpacked source $src" >&2
  fi
  printf '%s\n' "$src"
}

fix_reflect2() {
  # Vendored modern-go/reflect2 v1.0.1 segfaults under Go >= 1.18 (fault in mapiterinit on the
  # first custom-resource create). Swap in Debian's 1.0.2 and bump every go.mod/modules.txt pin.
  local src="$1" sys=/usr/share/gocode/src/github.com/modern-go/reflect2
  [ -d "$sys" ] || die "$sys missing (golang-github-modern-go-reflect2-dev)"
  if grep -q 'reflect2 v1.0.1' "$src/go.mod" "$src/vendor/modules.txt" 2>/dev/null \
     || ! cmp -s "$sys/reflect2.go" "$src/vendor/github.com/modern-go/reflect2/reflect2.go"; then
    step "replacing vendored modern-go/reflect2 v1.0.1 with Debian's v1.0.2"
    rm -rf "$src/vendor/github.com/modern-go/reflect2"
    mkdir -p "$src/vendor/github.com/modern-go/reflect2"
    rsync -a --exclude '*_test.go' "$sys/" "$src/vendor/github.com/modern-go/reflect2/"
    sed -i 's#reflect2 v1\.0\.1#reflect2 v1.0.2#g' "$src/go.mod" "$src/vendor/modules.txt" \
      "$src"/staging/src/k8s.io/*/go.mod
  else
    step "reflect2 already at v1.0.2"
  fi
}

build_binaries() {
  local src="$1" t
  step "building ${TARGETS[*]} (CGO_ENABLED=0; ~5-10 min the first time on 2 cores)"
  mkdir -p "$src/.go/src/k8s.io"
  ln -sfn ../../.. "$src/.go/src/k8s.io/kubernetes"
  local start=$SECONDS
  (
    cd "$src"
    export GOPATH="$src/.go" CGO_ENABLED=0
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager"
  ) || die "make failed (see output above)"
  step "build took $((SECONDS - start)) s"
  mkdir -p "$BIN"
  for t in "${TARGETS[@]}"; do
    local out
    out="$(find "$src/_output" -type f -name "$t" -perm -u+x | head -n1)"
    [ -n "$out" ] || die "built binary $t not found under $src/_output"
    install -m 0755 "$out" "$BIN/$t.tmp" && mv -f "$BIN/$t.tmp" "$BIN/$t"
  done
}

main() {
  mkdir -p "$BUILD"
  ensure_packages
  ensure_deb_src
  quiet_etcd_service
  local src
  src="$(fetch_source)"
  fix_reflect2 "$src"
  build_binaries "$src"
  cached_ok || die "cached binaries in $BIN do not run"
  for t in "${TARGETS[@]}"; do step "$t: $("$BIN/$t" --version) -> $BIN/$t"; done
  command -v kubectl >/dev/null 2>&1 \
    || step "WARNING: kubectl not on PATH; the tests need it (Debian: kubernetes-client)"
  step "done"
}

main "$@"
