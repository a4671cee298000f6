#!/usr/bin/env bash
# make cluster-down: stops everything cluster-up started, by PID file (never by name), pods first so that the
# kubelet tears down their containers and network namespaces. Caches stay; WIPE=1 also forgets the cluster's state
# (etcd, PKI, volumes, credentials) for a fresh cluster next time.
source "$(dirname "$0")/common.sh"
kubectl() { "$BIN/kubectl" --request-timeout=10s "$@"; }
for name in kserve ray-operator spark-operator mpi-operator kube-controller-manager kube-scheduler; do stop "$name"; done
if running kubelet && running kube-apiserver; then
  kubectl delete pods --all --all-namespaces --grace-period=5 --wait=false >/dev/null 2>&1 || true
  # A pod leaves the API only once the kubelet has stopped its sandbox, which tears down its network namespace;
  # no containers left is not enough (the sandboxes outlive them).
  waited=0
  until [ -z "$(kubectl get pods --all-namespaces -o name 2>/dev/null)" ] &&
        [ -z "$("${CTR[@]}" tasks ls -q 2>/dev/null)" ]; do
    [ "$waited" -ge 120 ] && { log "pods still terminating after ${waited} s; stopping anyway"; break; }
    sleep 1; waited=$((waited + 1))
  done
  log "pods gone in ${waited} s"
fi
for name in kubelet kube-proxy coredns metrics-server kube-apiserver etcd artifact-server; do stop "$name"; done
# Containers the kubelet did not get to
for task in $("${CTR[@]}" tasks ls -q 2>/dev/null); do "${CTR[@]}" tasks kill -s KILL "$task" >/dev/null 2>&1 || true; done
stop dockerd
stop containerd
# What the kubelet, containerd and dockerd mounted under the cluster's state (volumes, sandbox /dev/shm, netns
# handles), and kube-proxy's iptables rules
awk -v root="$STATE/" 'index($2, root) == 1 {print $2}' /proc/mounts | sort -r | while read -r mount; do
  umount "$mount" 2>/dev/null || umount -l "$mount"
done
[ -x "$BIN/kube-proxy" ] && "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
# The kubelet's own chains (kube-proxy's went with --cleanup): the jumps to them, then the chains.
for tool in iptables ip6tables; do
  for table in filter nat mangle; do
    for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
      for from in $("$tool" -t "$table" -S 2>/dev/null | sed -n "s/^-A \([A-Z]*\) -j $chain\$/\1/p"); do
        "$tool" -t "$table" -D "$from" -j "$chain"
      done
      "$tool" -t "$table" -F "$chain" 2>/dev/null && "$tool" -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
done
# Pod network namespaces nobody tore down (a kubelet that did not get to them): the peers of the veths on our
# bridge, which `ip -o link` names as "link-netns <name>".
for name in $(ip -o link show master cni0 2>/dev/null | sed -n 's/.* link-netns \([^ ]*\).*/\1/p'); do
  ip netns delete "$name" && log "removed pod network namespace $name"
done
for direction in -i -o; do iptables -D FORWARD "$direction" cni0 -j ACCEPT 2>/dev/null || true; done
ip link show cni0 >/dev/null 2>&1 && ip link delete cni0
if [ "${WIPE:-0}" = 1 ]; then
  rm -rf "$STATE"
  log "state removed ($STATE); caches kept ($C)"
fi
log "down"
