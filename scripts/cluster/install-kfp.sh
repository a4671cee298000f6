#!/usr/bin/env bash
# Kubeflow Pipelines on the cluster (namespace kubeflow): KFP's own manifests from the pinned source, with
# manifests/kfp on top (read its header for what changes and why). Runs after install.sh: KFP keeps its artifacts
# in kuberec's MinIO, and its runs use kuberec's settings and credentials, copied here into KFP's namespace.
source "$(dirname "$0")/common.sh"
kubectl() { "$BIN/kubectl" "$@"; }
cd "$REPO"
[ -d "$SRC/kfp/manifests/kustomize" ] || die "no Kubeflow Pipelines source in $SRC/kfp: run scripts/cluster/build-kfp.sh"

# KFP's manifests beside kuberec's overlay; their remote Argo bases point at the pinned Argo source instead.
manifests=$STATE/kfp-manifests
rm -rf "$manifests" && mkdir -p "$manifests"
cp -r "$SRC/kfp/manifests/kustomize" "$manifests/upstream"
cp -r "$SRC/argo-workflows/manifests" "$manifests/argo"
cp -r manifests/kfp "$manifests/kuberec"
"$REPO/.venv/bin/python" - "$manifests" <<'PYTHON'
import os, re, sys
from pathlib import Path

root = Path(sys.argv[1])
remote = re.compile(r"https://github\.com/argoproj/argo-workflows/manifests/([^?\s]+)\?\S+")
for kustomization in root.glob("upstream/**/kustomization.yaml"):
    text = kustomization.read_text()
    local = remote.sub(lambda m: os.path.relpath(root / "argo" / m.group(1), kustomization.parent), text)
    if local != text:
        kustomization.write_text(local)
leftover = [str(k) for k in root.glob("upstream/**/kustomization.yaml")
            if any("://" in line.split("#")[0] for line in k.read_text().splitlines())]
if leftover:
    sys.exit(f"remote bases left in KFP's manifests (nothing can fetch them here): {leftover}")
PYTHON

kubectl apply --server-side --force-conflicts -k "$manifests/upstream/cluster-scoped-resources" >/dev/null
kubectl wait --for condition=established --timeout=60s crd/workflows.argoproj.io crd/scheduledworkflows.kubeflow.org \
  crd/workflowtaskresults.argoproj.io >/dev/null

# Credentials: the database's (random, kept beside kuberec's) and kuberec's MinIO for KFP's artifacts.
credentials=$STATE/credentials.env
grep -q '^KFP_DB_PASSWORD=' "$credentials" ||
  (umask 077; echo "KFP_DB_PASSWORD=$(openssl rand -hex 24)" >> "$credentials")
set -a; source "$credentials"; set +a
kubectl -n kubeflow create secret generic mysql-secret --from-literal=username=root \
  --from-literal=password="$KFP_DB_PASSWORD" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n kubeflow create secret generic mlpipeline-minio-artifact --from-literal=accesskey="$AWS_ACCESS_KEY_ID" \
  --from-literal=secretkey="$AWS_SECRET_ACCESS_KEY" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# KFP runs its task pods in its own namespace: they read kuberec's settings and credentials there.
for object in configmap/kuberec-settings secret/kuberec-lake secret/kuberec-mlflow; do
  kubectl -n kuberec get "$object" >/dev/null 2>&1 || continue  # kuberec-mlflow is optional
  kubectl -n kuberec get "$object" -o json | "$REPO/.venv/bin/python" -c '
import json, sys
obj = json.load(sys.stdin)
meta = obj["metadata"]
obj["metadata"] = {"name": meta["name"], "namespace": "kubeflow", "labels": meta.get("labels", {}),
                   "annotations": {k: v for k, v in meta.get("annotations", {}).items() if "last-applied" not in k}}
print(json.dumps(obj))' | kubectl apply -f - >/dev/null
done

# The database's volume on this machine's disk, like kuberec's (no storage provisioner on this node).
mkdir -p "$STATE/volumes/kfp-mysql" && chown 999:999 "$STATE/volumes/kfp-mysql"
kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata: {name: kubeflow-pipelines-mysql, labels: {app.kubernetes.io/part-of: kubeflow-pipelines}}
spec:
  capacity: {storage: 2Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {namespace: kubeflow, name: mysql-pv-claim}
  hostPath: {path: $STATE/volumes/kfp-mysql, type: Directory}
YAML

kubectl apply -k "$manifests/kuberec" >/dev/null
kubectl apply -f manifests/kfp/kuberec-rolebinding.yaml >/dev/null
log "Kubeflow Pipelines applied (manifests/kfp); waiting for its pods"
for deployment in $(kubectl -n kubeflow get deployments -o name); do
  kubectl -n kubeflow rollout status "$deployment" --timeout=600s >/dev/null ||
    { kubectl -n kubeflow get pods >&2; die "$deployment is not ready (kubectl -n kubeflow describe $deployment)"; }
done
kubectl -n kubeflow get pods
