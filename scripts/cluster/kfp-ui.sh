#!/usr/bin/env bash
# make kfp-ui: the Kubeflow Pipelines UI of the cluster on this machine's 127.0.0.1 (kubectl port-forward, in the
# foreground until Ctrl-C). The same address serves KFP's API: use it as KFP_HOST for make pipeline-upload and
# make pipeline-run. KFP_UI_PORT picks the port (default 8088).
source "$(dirname "$0")/common.sh"
port=${KFP_UI_PORT:-8088}
"$BIN/kubectl" -n kubeflow get service ml-pipeline-ui >/dev/null ||
  die "no Kubeflow Pipelines UI on the cluster (KUBECONFIG=$KUBECONFIG): run make cluster-up"
echo "Kubeflow Pipelines UI: http://127.0.0.1:$port/   (Ctrl-C stops the port-forward)"
echo "  upload and run from here:  KFP_HOST=http://127.0.0.1:$port make pipeline-upload | pipeline-run"
exec "$BIN/kubectl" -n kubeflow port-forward --address 127.0.0.1 service/ml-pipeline-ui "$port:80"
