#!/usr/bin/env bash
# Builds Kubeflow Pipelines $KFP_VERSION (single-user, standalone) from its pinned sources into $KUBEREC_CACHE/cluster:
# the API server, persistence agent, scheduled-workflow controller, v2 driver and launcher, Argo Workflows'
# controller and executor (the version KFP's go.mod pins), grpcwebproxy for the UI's metadata calls, and the UI
# (build-kfp-ui.sh). The Go module proxy refuses KFP's own module, and Argo's module zip drops a symlink argoexec
# needs, so both come as source: the tarballs in $KFP_SOURCES (checked against its SHA256SUMS) or, where GitHub can
# be reached, a clone of the pinned tags. Cold on 2 cores: about 25 minutes; warm: seconds (stamped like build.sh).
source "$(dirname "$0")/common.sh"
mkdir -p "$C/tmpmod" "$BIN/.stamps"

# kfp_source NAME TARBALL REPOSITORY TAG: the source tree in $SRC/NAME, extracted or cloned once per version
kfp_source() {
  local name=$1 tarball=$2 repository=$3 tag=$4 dir=$SRC/$1
  [ "$(cat "$dir/.kuberec-version" 2>/dev/null)" = "$tag" ] && return
  rm -rf "$dir" "$dir.part"; mkdir -p "$dir.part"
  if [ -n "$KFP_SOURCES" ] && [ -f "$KFP_SOURCES/$tarball" ]; then
    (cd "$KFP_SOURCES" && grep " $tarball\$" SHA256SUMS | sha256sum --check --quiet) ||
      die "$KFP_SOURCES/$tarball does not match its SHA256SUMS"
    tar -xzf "$KFP_SOURCES/$tarball" -C "$dir.part" --strip-components=1
  elif ! git clone --quiet --depth 1 --branch "$tag" "https://github.com/$repository.git" "$dir.part" 2>/dev/null; then
    rm -rf "$dir.part"
    die "no $name $tag source: set KFP_SOURCES to a directory holding $tarball and its SHA256SUMS (GitHub cannot be reached)"
  fi
  echo "$tag" > "$dir.part/.kuberec-version"
  mv "$dir.part" "$dir"
}
kfp_source kfp "kubeflow-pipelines-$KFP_VERSION.tar.gz" kubeflow/pipelines "$KFP_VERSION"
argo_version=$(awk '$1 == "github.com/argoproj/argo-workflows/v4" {print $2; exit}' "$SRC/kfp/go.mod")
[ "$argo_version" = "$ARGO_VERSION" ] ||
  die "KFP $KFP_VERSION pins Argo Workflows $argo_version, common.sh says $ARGO_VERSION: make them agree"
kfp_source argo-workflows "argo-workflows-$ARGO_VERSION.tar.gz" argoproj/argo-workflows "$ARGO_VERSION"

# The API server uses cgo (glibc): its image is Debian bookworm. The driver and the launcher are static: KFP copies
# the launcher into every step's container, whatever its base.
CGO_ENABLED=1 go_binary kfp-apiserver "$KFP_VERSION" kfp ./backend/src/apiserver
go_binary kfp-persistence-agent "$KFP_VERSION" kfp ./backend/src/agent/persistence
go_binary kfp-scheduledworkflow "$KFP_VERSION" kfp ./backend/src/crd/controller/scheduledworkflow
GOFLAGS="$GOFLAGS -tags=netgo" go_binary kfp-driver "$KFP_VERSION" kfp ./backend/src/v2/cmd/driver
GOFLAGS="$GOFLAGS -tags=netgo" go_binary kfp-launcher "$KFP_VERSION" kfp ./backend/src/v2/cmd/launcher-v2
argo_ldflags="-X github.com/argoproj/argo-workflows/v4.version=$ARGO_VERSION"
go_binary argo-workflow-controller "$ARGO_VERSION" argo-workflows ./cmd/workflow-controller "$argo_ldflags"
go_binary argoexec "$ARGO_VERSION" argo-workflows ./cmd/argoexec "$argo_ldflags"

# grpcwebproxy: the UI speaks gRPC-web to ML Metadata (upstream puts Envoy in between; this one is a Go module)
if ! built grpcwebproxy "$GRPCWEBPROXY_VERSION"; then
  log "building grpcwebproxy $GRPCWEBPROXY_VERSION"
  (cd "$C/tmpmod" && GOBIN=$BIN go install "github.com/improbable-eng/grpc-web/go/grpcwebproxy@$GRPCWEBPROXY_VERSION")
  stamp grpcwebproxy "$GRPCWEBPROXY_VERSION"
fi

"$(dirname "$0")/build-kfp-ui.sh"
log "Kubeflow Pipelines $KFP_VERSION built (Argo Workflows $ARGO_VERSION)"
