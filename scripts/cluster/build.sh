#!/usr/bin/env bash
# Builds every binary `make cluster-up` runs, from the Go module proxy and Debian packages only, into
# $KUBEREC_CACHE/cluster/bin. Each binary carries a stamp of its version: a rerun with everything built takes seconds.
# Cold on 2 cores: 20-40 minutes (Kubernetes 6-15 min, each operator 2-6 min); run it in the background and poll.
source "$(dirname "$0")/common.sh"
mkdir -p "$C/tmpmod" "$BIN/.stamps"
cd "$C/tmpmod"
[ -f go.mod ] || go mod init kuberec-cluster-build >/dev/null 2>&1

# The pod sandbox ("pause") process: waits for a signal. Built here because registry.k8s.io cannot be reached.
if ! built pause 1; then
  mkdir -p "$SRC/pause"
  printf 'module pause\n\ngo 1.22\n' > "$SRC/pause/go.mod"
  cat > "$SRC/pause/main.go" <<'GO'
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	<-signals
}
GO
  go_binary pause 1 pause .
fi
# etcd 3.5 from Debian trixie, fetched with a throwaway apt state dir (the system's apt config stays untouched).
if ! built etcd "$ETCD_DEBIAN_SUITE"; then
  apt_dir=$C/apt-$ETCD_DEBIAN_SUITE; mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
  # the machine's own Debian mirror, as its apt sources name it
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null |
    awk '$1 == "deb" || $1 == "URIs:" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' || true)
  [ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list{,.d} (needed for etcd-server)"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $ETCD_DEBIAN_SUITE main" > "$apt_dir/sources.list"
  apt_opts=(-o Dir::Etc::SourceList="$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache="$apt_dir/cache" -o Debug::NoLocking=1)
  apt-get "${apt_opts[@]}" -qq update
  (cd "$apt_dir/debs" && rm -f ./*.deb && apt-get "${apt_opts[@]}" -qq download etcd-server)
  rm -rf "$apt_dir/root"; dpkg -x "$apt_dir"/debs/etcd-server_*.deb "$apt_dir/root"
  install -m 0755 "$apt_dir/root/usr/bin/etcd" "$BIN/etcd"
  stamp etcd "$ETCD_DEBIAN_SUITE"
  log "etcd: $("$BIN/etcd" --version | head -1)"
fi

# Kubernetes from its module source: its go.mod points the k8s.io/* staging modules at ./staging, which the module
# zip lacks; point them at the published v0.X.Y modules instead.
if ! built kubelet "$K8S_VERSION" || ! built kubectl "$K8S_VERSION"; then
  module_source k8s.io/kubernetes "$K8S_VERSION" kubernetes
  (cd "$SRC/kubernetes" && rm -f go.work go.work.sum &&
    sed -i -E "s#^(\s+)(k8s.io/[a-z0-9-]+) => ./staging/src/k8s.io/[a-z0-9-]+#\1\2 => \2 v0.${K8S_VERSION#v1.}#" go.mod)
fi
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
k8s_ldflags="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
for component in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
  go_binary "$component" "$K8S_VERSION" kubernetes "./cmd/$component" "$k8s_ldflags"
done

built coredns "$COREDNS_VERSION" || module_source github.com/coredns/coredns "$COREDNS_VERSION" coredns
go_binary coredns "$COREDNS_VERSION" coredns .

built mpi-operator "$MPI_OPERATOR_VERSION" || module_source github.com/kubeflow/mpi-operator "$MPI_OPERATOR_VERSION" mpi-operator
go_binary mpi-operator "$MPI_OPERATOR_VERSION" mpi-operator ./cmd/mpi-operator

built spark-operator "$SPARK_OPERATOR_VERSION" || module_source github.com/kubeflow/spark-operator/v2 "$SPARK_OPERATOR_VERSION" spark-operator
go_binary spark-operator "$SPARK_OPERATOR_VERSION" spark-operator ./cmd/operator

built ray-operator "$KUBERAY_VERSION" || module_source github.com/ray-project/kuberay/ray-operator "$KUBERAY_VERSION" kuberay
go_binary ray-operator "$KUBERAY_VERSION" kuberay .

built kserve-manager "$KSERVE_VERSION" || module_source github.com/kserve/kserve "$KSERVE_VERSION" kserve
go_binary kserve-manager "$KSERVE_VERSION" kserve ./cmd/manager
# KServe's InferenceGraph router: its Splitter node is the weighted traffic split of kuberec's canaries.
go_binary kserve-router "$KSERVE_VERSION" kserve ./cmd/router

# The resource metrics API (metrics.k8s.io) that KServe's HorizontalPodAutoscalers read pods' CPU from.
built metrics-server "$METRICS_SERVER_VERSION" || module_source sigs.k8s.io/metrics-server "$METRICS_SERVER_VERSION" metrics-server
go_binary metrics-server "$METRICS_SERVER_VERSION" metrics-server ./cmd/metrics-server

built minio "$MINIO_VERSION" || module_source github.com/minio/minio "$MINIO_VERSION" minio
go_binary minio "$MINIO_VERSION" minio .

log "binaries ok ($BIN)"
