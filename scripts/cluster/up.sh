#!/usr/bin/env bash
# make cluster-up: a real single-node Kubernetes with mpi-operator, spark-operator, KubeRay and KServe, kuberec's
# images on the node, kuberec installed (manifests/overlays/local) and Kubeflow Pipelines beside it (manifests/kfp).
# Cold: 60-90 minutes of builds, run in the background by whoever calls it; warm (everything cached): about a minute
# plus the pods' start.
source "$(dirname "$0")/common.sh"
scripts=$REPO/scripts/cluster
[ "$(id -u)" = 0 ] || die "cluster-up runs as root (it starts containerd, the kubelet and network namespaces)"
packages=()
for tool_package in containerd:containerd runc:runc /usr/sbin/dockerd:docker.io iptables:iptables mmdebstrap:mmdebstrap \
    /usr/lib/cni/bridge:containernetworking-plugins conntrack:conntrack openssl:openssl; do
  command -v "${tool_package%%:*}" >/dev/null || packages+=("${tool_package#*:}")
done
if [ ${#packages[@]} -gt 0 ]; then
  log "installing Debian packages: ${packages[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
times=$STATE/up-times.tsv
[ -f "$times" ] || printf 'phase\tseconds\tdate\n' > "$times"
phase() {
  local name=$1 start=$SECONDS; shift
  "$@"
  printf '%s\t%s\t%s\n' "$name" "$((SECONDS - start))" "$(date -u +%FT%TZ)" >> "$times"
}
total=$SECONDS
phase build "$scripts/build.sh"
phase build-kfp "$scripts/build-kfp.sh"
phase runtime "$scripts/start-runtime.sh"
phase images "$scripts/images.sh"
phase kubernetes "$scripts/start-cluster.sh"
phase operators "$scripts/start-operators.sh"
phase install "$scripts/install.sh"
phase install-kfp "$scripts/install-kfp.sh"
printf 'total\t%s\t%s\n' "$((SECONDS - total))" "$(date -u +%FT%TZ)" >> "$times"
log "up in $((SECONDS - total)) s. Use it with:"
echo "  export KUBECONFIG=$KUBECONFIG"
