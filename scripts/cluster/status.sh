#!/usr/bin/env bash
# make cluster-status: which of cluster-up's processes run, and what the cluster runs.
source "$(dirname "$0")/common.sh"
for name in containerd dockerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy coredns metrics-server \
    mpi-operator spark-operator ray-operator kserve; do
  if running "$name"; then printf '%-24s running (pid %s)\n' "$name" "$(cat "$PIDS/$name.pid")"
  else printf '%-24s stopped\n' "$name"; fi
done
if running kube-apiserver; then
  echo "KUBECONFIG=$KUBECONFIG"
  "$BIN/kubectl" get nodes -o wide
  "$BIN/kubectl" get pods --all-namespaces
  "$BIN/kubectl" get sparkapplications,mpijobs,rayjobs,inferenceservices --all-namespaces 2>/dev/null
fi
