# Sourced by scripts/cluster/*.sh: versions, paths and the PID-file process helpers of `make cluster-up`.
# Cache (kept by cluster-down): $KUBEREC_CACHE/cluster (binaries, sources, image bases); Go caches under $KUBEREC_CACHE.
# State (one cluster): $KUBEREC_HOME/cluster (etcd, PKI, kubelet, containerd, dockerd, logs, PID files).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KUBEREC_HOME=$(realpath -m "${KUBEREC_HOME:-$REPO/.kuberec}")
CACHE=$(realpath -m "${KUBEREC_CACHE:-$KUBEREC_HOME/cache}")
C=$CACHE/cluster            # build outputs, reused by every cluster-up
BIN=$C/bin
SRC=$C/src
STATE=$KUBEREC_HOME/cluster # this cluster's state; cluster-down WIPE=1 removes it
RUN=$STATE/run
PIDS=$STATE/pids
LOGS=$STATE/logs
PKI=$STATE/pki
export KUBECONFIG=$STATE/admin.kubeconfig
export DOCKER_HOST=unix://$STATE/docker/docker.sock
CONTAINERD_SOCK=$STATE/containerd/containerd.sock
CTR=(ctr --address "$CONTAINERD_SOCK" -n k8s.io)
NODE_NAME=kuberec-node
# The node's address: pods reach the API server and CoreDNS here. It is this machine's own address (never routed out).
NODE_IP=${NODE_IP:-$(hostname -I | cut -d' ' -f1)}
POD_SUBNET=10.88.0.0/24
SERVICE_RANGE=10.0.0.0/24
CLUSTER_DNS=10.0.0.10

# Versions. Operators: the versions whose CRDs kuberec vendors (tests/k8s/crds/PROVENANCE.md), or the nearest the
# Go module proxy serves (docs/cluster-guide.md says which and why).
K8S_VERSION=v1.36.4
COREDNS_VERSION=v1.12.1
MPI_OPERATOR_VERSION=v0.8.0
SPARK_OPERATOR_VERSION=v2.5.2
KUBERAY_VERSION=v1.6.1      # v1.7.0 (vendored CRDs): the module proxy answers 403 "not available"
KSERVE_VERSION=v0.20.0
METRICS_SERVER_VERSION=v0.8.0
METRICS_SERVER_PORT=4443  # on the node address, behind the metrics-server Service
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c  # the newest MinIO server module the proxy serves
ETCD_DEBIAN_SUITE=trixie    # etcd-server 3.5 (bookworm ships 3.4)
# Kubeflow Pipelines (scripts/cluster/build-kfp.sh): the release matching the kfp SDK pin, the Argo Workflows its
# go.mod pins, and where their source tarballs are (KFP_SOURCES; without it the tags are cloned from GitHub).
KFP_VERSION=2.17.0
ARGO_VERSION=v4.0.5
GRPCWEBPROXY_VERSION=v0.15.0
KFP_SOURCES=${KFP_SOURCES-$( [ -d "$REPO/../shared/kfp" ] && realpath "$REPO/../shared/kfp" || true)}

export GOPATH=$CACHE/go GOCACHE=$CACHE/go-build GOTOOLCHAIN=local GOFLAGS="-modcacherw -buildvcs=false" CGO_ENABLED=0
GOMODCACHE=$GOPATH/pkg/mod
mkdir -p "$BIN" "$SRC" "$PIDS" "$LOGS"
PATH=$BIN:$PATH

log() { echo "cluster: $*"; }
die() { echo "cluster: error: $*" >&2; exit 1; }

# start NAME CMD...: run in the background with its own log, PID in $PIDS/NAME.pid (nothing if it already runs)
start() {
  local name=$1; shift
  if running "$name"; then log "$name already running (pid $(cat "$PIDS/$name.pid"))"; return; fi
  nohup "$@" > "$LOGS/$name.log" 2>&1 &
  echo $! > "$PIDS/$name.pid"
}
running() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }
# stop NAME: TERM the recorded PID, KILL it after 20 s; never by name
stop() {
  local name=$1 pid
  [ -f "$PIDS/$name.pid" ] || return 0
  pid=$(cat "$PIDS/$name.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    log "stopped $name (pid $pid)"
  fi
  rm -f "$PIDS/$name.pid"
}
# wait_for WHAT SECONDS CMD...: poll CMD every second until it succeeds
wait_for() {
  local what=$1 seconds=$2; shift 2
  for _ in $(seq "$seconds"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  die "$what not ready after ${seconds}s (logs: $LOGS)"
}

# Go builds into $BIN, each stamped with its version (scripts/cluster/build.sh, build-kfp.sh)
built() { [ "$(cat "$BIN/.stamps/$1" 2>/dev/null)" = "$2" ] && [ -x "$BIN/$1" ]; }
stamp() { echo "$2" > "$BIN/.stamps/$1"; }
# module_source MODULE VERSION DIR: a writable copy of the module's source (builds need it: replace directives)
module_source() {
  local module=$1 version=$2 dir=$SRC/$3
  [ "$(cat "$dir/.kuberec-version" 2>/dev/null)" = "$module@$version" ] && return
  (cd "$C/tmpmod" && go mod download "$module@$version")
  rm -rf "$dir"; cp -r "$GOMODCACHE/$module@$version" "$dir"; chmod -R u+w "$dir"
  echo "$module@$version" > "$dir/.kuberec-version"
}
# go_binary NAME VERSION DIR PACKAGE [LDFLAGS]: go build PACKAGE inside $SRC/DIR into $BIN/NAME, timed
go_binary() {
  local name=$1 version=$2 dir=$3 package=$4 ldflags=${5:-}
  built "$name" "$version" && return
  log "building $name $version (minutes the first time)"
  local start=$SECONDS
  (cd "$SRC/$dir" && go build -mod=mod -p=2 -trimpath -ldflags="-s -w $ldflags" -o "$BIN/$name" "$package")
  stamp "$name" "$version"
  log "built $name in $((SECONDS - start)) s"
}
