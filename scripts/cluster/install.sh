#!/usr/bin/env bash
# kuberec's own part of the cluster: the Secrets (random values, kept in $KUBEREC_HOME/cluster/credentials.env),
# PersistentVolumes on this machine's disk for MinIO's and PostgreSQL's claims, then
# `kubectl apply -k manifests/overlays/local`, and waits until every kuberec pod runs and the buckets exist.
source "$(dirname "$0")/common.sh"
kubectl() { "$BIN/kubectl" "$@"; }
cd "$REPO"
kubectl apply -f manifests/base/namespace.yaml >/dev/null

credentials=$STATE/credentials.env
if [ ! -f "$credentials" ]; then
  (umask 077; printf 'AWS_ACCESS_KEY_ID=kuberec\nAWS_SECRET_ACCESS_KEY=%s\nPOSTGRES_USER=mlflow\nPOSTGRES_PASSWORD=%s\n' \
    "$(openssl rand -hex 24)" "$(openssl rand -hex 24)" > "$credentials")
fi
set -a; source "$credentials"; set +a
kubectl -n kuberec create secret generic kuberec-lake --from-literal=AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
  --from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# KServe's storage initializer gets these credentials through the kuberec-serving service account.
kubectl -n kuberec annotate --overwrite secret kuberec-lake serving.kserve.io/s3-endpoint=minio.kuberec.svc.cluster.local:9000 \
  serving.kserve.io/s3-usehttps=0 >/dev/null
kubectl -n kuberec create secret generic kuberec-postgres --from-literal=POSTGRES_USER="$POSTGRES_USER" \
  --from-literal=POSTGRES_PASSWORD="$POSTGRES_PASSWORD" --dry-run=client -o yaml | kubectl apply -f - >/dev/null

# No storage provisioner on this node: one hostPath volume per StatefulSet claim, bound to it by name.
for claim in data-minio-0:minio:5Gi:0 data-postgres-0:postgres:1Gi:999; do
  IFS=: read -r name app size owner <<< "$claim"
  mkdir -p "$STATE/volumes/$app" && chown "$owner:$owner" "$STATE/volumes/$app"
  kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata: {name: kuberec-$app, labels: {app.kubernetes.io/part-of: kuberec}}
spec:
  capacity: {storage: $size}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {namespace: kuberec, name: $name}
  hostPath: {path: $STATE/volumes/$app, type: Directory}
YAML
done

kubectl apply -k manifests/overlays/local >/dev/null
log "kuberec applied (manifests/overlays/local); waiting for its pods"
kubectl -n kuberec rollout status statefulset/minio statefulset/postgres deployment/mlflow \
  deployment/kuberec-reaper --timeout=600s >/dev/null ||
  { kubectl -n kuberec get pods >&2; die "kuberec's pods are not ready (kubectl -n kuberec describe pods)"; }
kubectl -n kuberec wait --for=condition=complete job/kuberec-buckets --timeout=300s >/dev/null ||
  { kubectl -n kuberec logs job/kuberec-buckets >&2; die "the buckets job did not complete"; }
kubectl -n kuberec get pods
