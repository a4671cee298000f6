#!/usr/bin/env bash
# The operators kuberec targets, with the CRDs from their own module sources: mpi-operator, spark-operator, KubeRay
# and KServe (Standard/RawDeployment mode: no Knative, Istio or cert-manager). They run as processes of this machine
# with the admin kubeconfig (docs/cluster-guide.md says why), each on its own 127.0.0.1 metrics/health ports.
source "$(dirname "$0")/common.sh"
kubectl() { "$BIN/kubectl" "$@"; }
PY=$REPO/.venv/bin/python

kserve_crds=()
for crd in serving.kserve.io_{inferenceservices,servingruntimes,clusterservingruntimes,trainedmodels,inferencegraphs} \
    clusterstoragecontainer/serving.kserve.io_clusterstoragecontainers; do
  kserve_crds+=(-f "$SRC/kserve/config/crd/full/$crd.yaml")
done
kubectl apply --server-side --force-conflicts -f "$SRC/mpi-operator/manifests/base/kubeflow.org_mpijobs.yaml" \
  -f "$SRC/kuberay/config/crd/bases/" -f "$SRC/spark-operator/config/crd/bases/" "${kserve_crds[@]}" >/dev/null
kubectl wait --for condition=established --timeout=60s crd/mpijobs.kubeflow.org crd/rayjobs.ray.io \
  crd/sparkapplications.sparkoperator.k8s.io crd/inferenceservices.serving.kserve.io >/dev/null
# KServe reads its configuration from its namespace; mpi-operator keeps its leader lease in its own.
for namespace in kserve mpi-operator; do
  kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
done

# mpi-operator
start mpi-operator "$BIN/mpi-operator" --kubeConfig "$KUBECONFIG" --monitoring-port 18380

# spark-operator runs spark-submit: the venv's pyspark (the same Spark as the images) is its SPARK_HOME
spark_home=$("$PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')
SPARK_HOME=$spark_home KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT=6443 \
  start spark-operator "$BIN/spark-operator" controller start --kubeconfig "$KUBECONFIG" --leader-election=false \
  --metrics-bind-address 127.0.0.1:18180 --health-probe-bind-address 127.0.0.1:18181 --enable-ui-service=false

# KubeRay polls each Ray head's dashboard at <head-service>.<namespace>.svc.cluster.local: it needs cluster DNS,
# so it runs in a private mount namespace whose /etc/resolv.conf names CoreDNS (the machine's own file is untouched).
printf 'nameserver %s\nsearch svc.cluster.local cluster.local\noptions ndots:5\n' "$NODE_IP" > "$STATE/resolv-cluster.conf"
start ray-operator unshare -m sh -c "mount --bind '$STATE/resolv-cluster.conf' /etc/resolv.conf && exec '$BIN/ray-operator' \
  --kubeconfig '$KUBECONFIG' --enable-leader-election=false --metrics-addr 127.0.0.1:18080 --health-probe-bind-address 127.0.0.1:18082"

# KServe: its configuration with the Standard (raw Deployment) mode, no ingress, and the pod webhook registered at
# this machine's manager, which injects the storage initializer into predictor pods.
"$PY" - "$SRC/kserve/config/configmap/inferenceservice.yaml" "kuberec-local/kserve-router:$KSERVE_VERSION" > "$STATE/inferenceservice-config.yaml" <<'PYTHON'
import json, re, sys
import yaml

config = yaml.safe_load(open(sys.argv[1]))
config["data"].pop("_example", None)
def edit(key, **changes):
    text = re.sub(r"^\s*#.*$", "", config["data"][key], flags=re.M)  # some values carry comments
    value = json.loads(text)
    value.update(changes)
    config["data"][key] = json.dumps(value, indent=2)
edit("deploy", defaultDeploymentMode="Standard")
edit("ingress", disableIngressCreation=True)
# InferenceGraph routers (the canaries' traffic split) from the image images.sh built from KServe's own source
edit("router", image=sys.argv[2], imagePullPolicy="Never", imagePullSecrets=[])
print(yaml.safe_dump(config))
PYTHON
kubectl apply -f "$STATE/inferenceservice-config.yaml" >/dev/null
certs=$STATE/kserve/k8s-webhook-server/serving-certs
mkdir -p "$certs"
[ -f "$certs/tls.crt" ] || openssl req -x509 -newkey rsa:2048 -nodes -keyout "$certs/tls.key" -out "$certs/tls.crt" \
  -days 3650 -subj "/CN=kserve-webhook" -addext "subjectAltName=IP:127.0.0.1" 2>/dev/null
TMPDIR=$STATE/kserve POD_NAMESPACE=kserve start kserve "$BIN/kserve-manager" --kubeconfig "$KUBECONFIG" \
  --metrics-addr 127.0.0.1:18280 --health-probe-addr 127.0.0.1:18281 --webhook-port 19443
kubectl apply -f - >/dev/null <<YAML
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: kuberec-kserve-pod-mutator}
webhooks:
  - name: inferenceservice.kserve-webhook-server.pod-mutator
    clientConfig:
      url: https://127.0.0.1:19443/mutate-pods
      caBundle: $(base64 -w0 < "$certs/tls.crt")
    failurePolicy: Fail
    sideEffects: None
    reinvocationPolicy: IfNeeded
    admissionReviewVersions: ["v1beta1"]
    objectSelector: {matchExpressions: [{key: serving.kserve.io/inferenceservice, operator: Exists}]}
    rules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}]
YAML
wait_for "kserve webhook" 60 curl -sk https://127.0.0.1:19443/
for operator in mpi-operator spark-operator ray-operator kserve; do
  running "$operator" || die "$operator exited (log: $LOGS/$operator.log)"
done
log "operators running: mpi-operator $MPI_OPERATOR_VERSION, spark-operator $SPARK_OPERATOR_VERSION, KubeRay $KUBERAY_VERSION, KServe $KSERVE_VERSION"
