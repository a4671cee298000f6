#!/usr/bin/env bash
# The single-node Kubernetes: PKI, etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet (on the
# containerd of start-runtime.sh), kube-proxy and CoreDNS, all processes of this machine with PID files in
# $KUBEREC_HOME/cluster/pids. Every client, the operators included, uses the admin kubeconfig it writes.
source "$(dirname "$0")/common.sh"
kubectl() { "$BIN/kubectl" "$@"; }

# -- PKI: one CA; the API server's certificate names every address it is reached at ---------------------------
mkdir -p "$PKI"
if [ ! -f "$PKI/ca.crt" ]; then
  (cd "$PKI"
   openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=kuberec-cluster-ca" 2>/dev/null
   printf 'subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:%s,IP:%s\nextendedKeyUsage=serverAuth\n' \
     "${SERVICE_RANGE%.*}.1" "$NODE_IP" > apiserver.ext
   openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
   openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 3650 -extfile apiserver.ext 2>/dev/null
   printf 'extendedKeyUsage=clientAuth\n' > client.ext
   openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=kuberec-admin" 2>/dev/null
   openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 3650 -extfile client.ext 2>/dev/null
   openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null)
  kubectl config set-cluster kuberec --server=https://127.0.0.1:6443 --certificate-authority="$PKI/ca.crt" --embed-certs >/dev/null
  kubectl config set-credentials kuberec-admin --client-certificate="$PKI/admin.crt" --client-key="$PKI/admin.key" --embed-certs >/dev/null
  kubectl config set-context kuberec --cluster=kuberec --user=kuberec-admin --namespace=kuberec >/dev/null
  kubectl config use-context kuberec >/dev/null
fi
# The aggregation layer: the API server forwards metrics.k8s.io to metrics-server with a client certificate of its
# own CA (the front proxy's), and metrics-server trusts the user it names in the request headers.
if [ ! -f "$PKI/front-proxy-client.crt" ]; then
  (cd "$PKI"
   openssl req -x509 -newkey rsa:2048 -nodes -keyout front-proxy-ca.key -out front-proxy-ca.crt -days 3650 -subj "/CN=kuberec-front-proxy-ca" 2>/dev/null
   printf 'extendedKeyUsage=clientAuth\n' > front-proxy-client.ext
   openssl req -newkey rsa:2048 -nodes -keyout front-proxy-client.key -out front-proxy-client.csr -subj "/CN=front-proxy-client" 2>/dev/null
   openssl x509 -req -in front-proxy-client.csr -CA front-proxy-ca.crt -CAkey front-proxy-ca.key -CAcreateserial \
     -out front-proxy-client.crt -days 3650 -extfile front-proxy-client.ext 2>/dev/null
   # metrics-server's serving certificate, from the cluster CA (the APIService's caBundle)
   printf 'subjectAltName=DNS:metrics-server.kube-system.svc,IP:%s\nextendedKeyUsage=serverAuth\n' "$NODE_IP" > metrics-server.ext
   openssl req -newkey rsa:2048 -nodes -keyout metrics-server.key -out metrics-server.csr -subj "/CN=metrics-server" 2>/dev/null
   openssl x509 -req -in metrics-server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out metrics-server.crt -days 3650 \
     -extfile metrics-server.ext 2>/dev/null)
fi

# -- control plane -------------------------------------------------------------------------------------------------
start etcd "$BIN/etcd" --data-dir "$STATE/etcd" --listen-client-urls http://127.0.0.1:2379 \
  --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 --quota-backend-bytes 4294967296
wait_for etcd 30 curl -sf http://127.0.0.1:2379/health
start kube-apiserver "$BIN/kube-apiserver" --etcd-servers http://127.0.0.1:2379 --bind-address 0.0.0.0 \
  --secure-port 6443 --advertise-address "$NODE_IP" --service-cluster-ip-range "$SERVICE_RANGE" \
  --client-ca-file "$PKI/ca.crt" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --kubelet-client-certificate "$PKI/admin.crt" --kubelet-client-key "$PKI/admin.key" \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --authorization-mode Node,RBAC --allow-privileged=true --enable-admission-plugins NodeRestriction \
  --kubelet-preferred-address-types InternalIP \
  --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- --proxy-client-cert-file "$PKI/front-proxy-client.crt" \
  --proxy-client-key-file "$PKI/front-proxy-client.key" --enable-aggregator-routing=true
wait_for kube-apiserver 120 kubectl get --raw /readyz
start kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig "$KUBECONFIG" \
  --authentication-kubeconfig "$KUBECONFIG" --authorization-kubeconfig "$KUBECONFIG" --leader-elect=false \
  --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
  --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
  --use-service-account-credentials=true --allocate-node-cidrs=true --cluster-cidr "$POD_SUBNET" \
  --node-cidr-mask-size 24 --service-cluster-ip-range "$SERVICE_RANGE" --bind-address 127.0.0.1
start kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$KUBECONFIG" --authentication-kubeconfig "$KUBECONFIG" \
  --authorization-kubeconfig "$KUBECONFIG" --leader-elect=false --bind-address 127.0.0.1

# -- the node --------------------------------------------------------------------------------------------------------
mkdir -p "$STATE/kubelet/manifests"
cat > "$STATE/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false          # this VM has cgroup v1 and no systemd
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
failSwapOn: false
authentication: {anonymous: {enabled: false}, webhook: {enabled: true}, x509: {clientCAFile: $PKI/ca.crt}}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$CLUSTER_DNS]
resolvConf: /etc/resolv.conf
staticPodPath: $STATE/kubelet/manifests
# A shared disk that is fairly full must not evict kuberec's pods.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
serializeImagePulls: false
podLogsDir: $STATE/pod-logs
YAML
# A FORWARD policy of DROP (Docker sets one when it manages iptables) would drop pod traffic: let pods on the
# bridge reach each other and this machine.
for direction in -i -o; do
  iptables -C FORWARD "$direction" cni0 -j ACCEPT 2>/dev/null || iptables -I FORWARD 1 "$direction" cni0 -j ACCEPT
done
start kubelet "$BIN/kubelet" --config "$STATE/kubelet/config.yaml" --kubeconfig "$KUBECONFIG" \
  --root-dir "$STATE/kubelet/root" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v=1
wait_for "node $NODE_NAME" 90 kubectl get node "$NODE_NAME"
# kube-proxy exits when its configuration file changes: write it only when its content does.
cat > "$STATE/kube-proxy.yaml.new" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $KUBECONFIG}
mode: iptables
clusterCIDR: $POD_SUBNET
hostnameOverride: $NODE_NAME
conntrack: {maxPerCore: 0}
YAML
cmp -s "$STATE/kube-proxy.yaml.new" "$STATE/kube-proxy.yaml" && rm "$STATE/kube-proxy.yaml.new" ||
  mv "$STATE/kube-proxy.yaml.new" "$STATE/kube-proxy.yaml"
start kube-proxy "$BIN/kube-proxy" --config "$STATE/kube-proxy.yaml"

# -- cluster DNS: CoreDNS on this machine at the node address, behind the kube-dns Service the kubelet names ------
upstream=$(awk '/^nameserver/ {print $2; exit}' /etc/resolv.conf)
cat > "$STATE/Corefile" <<COREFILE
.:53 {
    bind $NODE_IP
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $KUBECONFIG kuberec
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    forward . $upstream
    cache 30
}
COREFILE
start coredns "$BIN/coredns" -conf "$STATE/Corefile"
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: $CLUSTER_DNS
  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kube-dns-node, namespace: kube-system, labels: {kubernetes.io/service-name: kube-dns}}
addressType: IPv4
endpoints: [{addresses: ["$NODE_IP"], conditions: {ready: true}}]
ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
YAML
# -- metrics-server: the resource metrics API (kubectl top, HorizontalPodAutoscalers' CPU) ------------------------
# A process of this machine like CoreDNS, behind a Service whose endpoint is the node address. The kubelet serves a
# certificate it signed itself for its host name only, so metrics-server does not verify it (on this one machine).
start metrics-server "$BIN/metrics-server" --kubeconfig "$KUBECONFIG" --authentication-kubeconfig "$KUBECONFIG" \
  --authorization-kubeconfig "$KUBECONFIG" --bind-address "$NODE_IP" --secure-port "$METRICS_SERVER_PORT" \
  --tls-cert-file "$PKI/metrics-server.crt" --tls-private-key-file "$PKI/metrics-server.key" \
  --kubelet-preferred-address-types InternalIP --kubelet-insecure-tls --metric-resolution 15s
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system}
spec:
  ports: [{name: https, port: 443, targetPort: $METRICS_SERVER_PORT, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: metrics-server-node, namespace: kube-system, labels: {kubernetes.io/service-name: metrics-server}}
addressType: IPv4
endpoints: [{addresses: ["$NODE_IP"], conditions: {ready: true}}]
ports: [{name: https, port: $METRICS_SERVER_PORT, protocol: TCP}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io}
spec:
  group: metrics.k8s.io
  version: v1beta1
  service: {name: metrics-server, namespace: kube-system, port: 443}
  caBundle: $(base64 -w0 < "$PKI/ca.crt")
  groupPriorityMinimum: 100
  versionPriority: 100
YAML
wait_for "node $NODE_NAME Ready" 120 sh -c "'$BIN/kubectl' get node '$NODE_NAME' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
wait_for "the metrics API" 120 kubectl get --raw "/apis/metrics.k8s.io/v1beta1/nodes/$NODE_NAME"
log "Kubernetes $K8S_VERSION up: node $NODE_NAME ($NODE_IP), with metrics-server $METRICS_SERVER_VERSION"
