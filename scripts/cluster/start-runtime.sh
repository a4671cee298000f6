#!/usr/bin/env bash
# containerd (the node's container runtime, runc + the bridge CNI) and Debian's dockerd on its own socket (image
# builds), all state under $KUBEREC_HOME/cluster. The machine's own files stay as they are.
source "$(dirname "$0")/common.sh"
for tool in containerd runc ctr /usr/sbin/dockerd /usr/bin/docker iptables mmdebstrap /usr/lib/cni/bridge; do
  command -v "$tool" >/dev/null || die "$tool is missing; install the Debian packages containerd runc docker.io iptables mmdebstrap containernetworking-plugins (make cluster-up does as root)"
done

# Image stores live in the cache (kept by cluster-down); sockets, logs and CNI state in $STATE.
dir=$STATE/containerd
mkdir -p "$C/containerd" "$dir/state" "$dir/cni/net.d"
cat > "$dir/config.toml" <<TOML
version = 2
root = "$C/containerd"
state = "$dir/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.10"
    # Without CAP_SYS_RESOURCE (a VM's root may lack it) runc fails on a negative oom_score_adj.
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "$dir/cni/net.d"
TOML
# Pods get addresses on the cni0 bridge, reached only from this machine.
cat > "$dir/cni/net.d/10-kuberec.conflist" <<JSON
{"cniVersion": "0.4.0", "name": "kuberec", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_SUBNET"}]], "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": "$STATE/cni-ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "loopback"}]}
JSON
start containerd containerd --config "$dir/config.toml"
wait_for containerd 30 ctr --address "$CONTAINERD_SOCK" version

dir=$STATE/docker
mkdir -p "$C/docker" "$dir/exec"
# Builds use the host's network (`docker build --network host`), so dockerd gets no bridge and leaves iptables alone:
# otherwise it adds docker0, its own chains and a FORWARD policy of DROP, which would also drop pod traffic.
if ! running dockerd; then
  start dockerd /usr/sbin/dockerd --data-root "$C/docker" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
    --host "$DOCKER_HOST" --containerd "$CONTAINERD_SOCK" --storage-driver overlay2 \
    --bridge none --iptables=false --ip6tables=false
fi
wait_for dockerd 60 /usr/bin/docker info
log "containerd and dockerd running ($STATE)"
