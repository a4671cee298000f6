#!/usr/bin/env bash
# Screenshots of the Kubeflow Pipelines UI as a browser shows it (headless Chromium): the pipelines list and the
# run pages given, into docs/images/kfp-<name>.png. Usage: kfp-screenshots.sh NAME=RUN_ID ... (e.g.
# widedeep=4c99b9e1-...). Reaches the UI through a port-forward on 127.0.0.1 that it starts and stops itself.
source "$(dirname "$0")/common.sh"
command -v chromium >/dev/null || die "no chromium (Debian package chromium) for the screenshots"
port=${KFP_UI_PORT:-8088}
out=$REPO/docs/images
mkdir -p "$out"
start kfp-ui-forward "$BIN/kubectl" -n kubeflow port-forward --address 127.0.0.1 service/ml-pipeline-ui "$port:80"
trap 'stop kfp-ui-forward' EXIT
wait_for "the UI's port-forward" 30 curl -sf "http://127.0.0.1:$port/apis/v2beta1/healthz"
shot() {  # shot NAME PATH: the page after 25 s of its own (virtual) time, enough for the run graph to lay out
  chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,1000 \
    --virtual-time-budget=25000 --screenshot="$out/kfp-$1.png" "http://127.0.0.1:$port/#$2" >/dev/null 2>&1
  log "docs/images/kfp-$1.png"
}
shot pipelines /pipelines
for pair in "$@"; do
  shot "run-${pair%%=*}" "/runs/details/${pair#*=}"
done
