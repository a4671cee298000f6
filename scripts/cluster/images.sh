#!/usr/bin/env bash
# kuberec's images, built by the dockerd that start-runtime.sh started, from the Dockerfiles in images/, and loaded
# onto the node (containerd's k8s.io namespace). This machine reaches no container registry, so the upstream bases
# are replaced through build arguments by bases made from Debian packages (images/bases), pip installs from the
# wheels `make setup` downloaded and Maven from the jars it fetched, both served on 127.0.0.1 for the build only.
# Usage: images.sh [IMAGE...] (default: all; `kfp`: Kubeflow Pipelines' images). Times and sizes go to
# $KUBEREC_HOME/cluster/images.tsv.
source "$(dirname "$0")/common.sh"
cd "$REPO"
TAG=${IMAGE_TAG:-dev}
REGISTRY=${IMAGE_REGISTRY:-kuberec}
KUBEREC_IMAGES=(runtime horovod-cpu spark serving mlflow)
PY=$REPO/.venv/bin/python
[ -x "$PY" ] || die "no .venv: run make setup first"
docker=(/usr/bin/docker)
export DOCKER_BUILDKIT=0  # the classic builder: BuildKit would fetch its Dockerfile frontend from a registry
wanted=("$@")
want() { [ ${#wanted[@]} -eq 0 ] || [[ " ${wanted[*]} " == *" $1 "* ]]; }
report=$STATE/images.tsv
[ -f "$report" ] || printf 'image\tbuild_s\tsize_mb\tdate\n' > "$report"
# build NAME TAG CONTEXT [docker build args...]: one image, timed, its size recorded
build() {
  local name=$1 tag=$2 context=$3; shift 3
  local start=$SECONDS
  log "building $tag"
  "${docker[@]}" build --network host -t "$tag" "$@" "$context" > "$LOGS/image-$name.log" 2>&1 ||
    { tail -30 "$LOGS/image-$name.log" >&2; die "image $tag failed (log: $LOGS/image-$name.log)"; }
  local size; size=$("${docker[@]}" image inspect -f '{{.Size}}' "$tag")
  printf '%s\t%s\t%s\t%s\n' "$tag" "$((SECONDS - start))" "$((size / 1000000))" "$(date -u +%FT%TZ)" >> "$report"
  log "built $tag in $((SECONDS - start)) s, $((size / 1000000)) MB"
}

# -- bases -----------------------------------------------------------------------------------------------------
mkdir -p "$C/images"
if ! "${docker[@]}" image inspect kuberec-local/debian:bookworm >/dev/null 2>&1; then
  if [ ! -f "$C/images/bookworm-minbase.tar" ]; then
    log "making a Debian bookworm root file system (mmdebstrap, about a minute)"
    mmdebstrap --quiet --format=tar --variant=minbase --include=ca-certificates bookworm "$C/images/bookworm-minbase.tar.part"
    mv "$C/images/bookworm-minbase.tar.part" "$C/images/bookworm-minbase.tar"
  fi
  "${docker[@]}" import "$C/images/bookworm-minbase.tar" kuberec-local/debian:bookworm >/dev/null
fi
# The pod sandbox image, under the name containerd's CRI asks for.
mkdir -p "$C/images/pause" && cp "$BIN/pause" "$C/images/pause/pause"
printf 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n' > "$C/images/pause/Dockerfile"
build pause registry.k8s.io/pause:3.10 "$C/images/pause"
build python kuberec-local/python:3.11 "$REPO/images/bases/python"
build maven kuberec-local/maven:3 "$REPO/images/bases/maven"
build postgres kuberec-local/postgres:15 "$REPO/images/bases/postgres"
ROUTER_IMAGE=kuberec-local/kserve-router:$KSERVE_VERSION
if [ -x "$BIN/kserve-router" ]; then
  mkdir -p "$C/images/kserve-router" && cp "$BIN/kserve-router" "$REPO/images/bases/kserve-router/Dockerfile" "$C/images/kserve-router/"
  build kserve-router "$ROUTER_IMAGE" "$C/images/kserve-router"
else
  log "warning: no KServe router binary in $BIN yet (scripts/cluster/build.sh builds it): its image is left for the next run"
fi
if [ -x "$BIN/minio" ]; then
  mkdir -p "$C/images/minio" && cp "$BIN/minio" "$REPO/images/bases/minio/Dockerfile" "$C/images/minio/"
  build minio kuberec-local/minio:dev "$C/images/minio"
else
  log "warning: no MinIO binary in $BIN yet (scripts/cluster/build.sh builds it): its image is left for the next run"
fi

# -- what the builds install from: wheels and Maven artifacts on 127.0.0.1 ------------------------------------
serve_dir=$C/images/serve
mkdir -p "$serve_dir" "$C/wheelhouse"
requirements=$C/images/requirements.txt
"$PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
  > "$requirements"
stamp=$(cat "$requirements" constraints.txt images/*/requirements.txt | sha256sum | cut -c1-16)
if [ "$(cat "$C/wheelhouse/.stamp" 2>/dev/null)" != "$stamp" ]; then
  log "collecting wheels into $C/wheelhouse (from pip's cache when make setup filled it)"
  PIP_CACHE_DIR=${PIP_CACHE_DIR:-$CACHE/pip} "$PY" -m pip download -q -c constraints.txt -r "$requirements" \
    -r images/serving/requirements.txt -r images/mlflow/requirements.txt "pip==25.3" -d "$C/wheelhouse"
  PIP_CACHE_DIR=${PIP_CACHE_DIR:-$CACHE/pip} "$PY" -m pip download -q --no-deps --no-binary horovod \
    "horovod==$(sed -n 's/^VERSION=//p' scripts/build-horovod.sh)" -d "$C/wheelhouse"
  echo "$stamp" > "$C/wheelhouse/.stamp"
fi
# The Spark image's jars, resolved on this machine into its Maven repository (Delta's already are, by make setup).
spark_arg() { sed -n "s/^ARG $1=//p" images/spark/Dockerfile; }
for artifact in "io.delta:delta-spark_2.13:$(spark_arg DELTA_VERSION)" "io.delta:delta-storage:$(spark_arg DELTA_VERSION)" \
    "org.apache.hadoop:hadoop-aws:$(spark_arg HADOOP_VERSION)" "software.amazon.awssdk:bundle:$(spark_arg AWS_SDK_VERSION)"; do
  IFS=: read -r group id version <<< "$artifact"
  [ -f "$HOME/.m2/repository/${group//.//}/$id/$version/$id-$version.jar" ] ||
    mvn -q -B dependency:get -Dartifact="$artifact" -Dtransitive=false >/dev/null
done
ln -sfn "$C/wheelhouse" "$serve_dir/wheels"
ln -sfn "$HOME/.m2/repository" "$serve_dir/m2"
# The same port as last time when it is free: the URL is a build arg, so a new one misses the layer cache and
# reinstalls every wheel (minutes, and Horovod recompiles).
port=$("$PY" - "$C/artifact-server.port" <<'PYTHON'
import socket, sys
from pathlib import Path
saved = Path(sys.argv[1])
for port in ([int(saved.read_text())] if saved.is_file() else []) + [0]:
    with socket.socket() as sock:
        # As http.server binds: a port whose last connections linger in TIME_WAIT (a build a minute ago) is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        port = sock.getsockname()[1]
        break
saved.write_text(f"{port}\n")
print(port)
PYTHON
)
stop artifact-server
start artifact-server "$PY" -m http.server --bind 127.0.0.1 --directory "$serve_dir" "$port"
trap 'stop artifact-server' EXIT
wait_for "artifact server" 20 curl -sf "http://127.0.0.1:$port/wheels/"
local_args=(--build-arg PYTHON_IMAGE=kuberec-local/python:3.11 --build-arg PIP_NO_INDEX=1
  --build-arg "PIP_FIND_LINKS=http://127.0.0.1:$port/wheels/" --build-arg MAVEN_IMAGE=kuberec-local/maven:3
  --build-arg "MAVEN_MIRROR=http://127.0.0.1:$port/m2/")

# -- kuberec's images ------------------------------------------------------------------------------------------
# The runtime's `deps` stage is its own image too: horovod-cpu compiles Horovod against it, so a change to src/
# does not recompile Horovod (docker-bake passes it as the runtime-deps context).
if want runtime || want horovod-cpu; then
  build runtime-deps runtime-deps "$REPO" -f images/runtime/Dockerfile --target deps "${local_args[@]}"
fi
for kind in "${KUBEREC_IMAGES[@]}"; do
  want "$kind" || continue
  # Every other named stage gets a tag as well: the prune below removes untagged images, which would take the
  # layer cache of stages no final image descends from (Horovod's compile, the Spark jars) and redo them each time.
  for stage in $(sed -n 's/^FROM .* AS \([a-z0-9_-]*\)$/\1/p' "images/$kind/Dockerfile"); do
    [ "$kind" = runtime ] && continue  # its `deps` stage is runtime-deps, built above
    build "$kind-$stage" "kuberec-stage/$kind:$stage" "$REPO" -f "images/$kind/Dockerfile" --target "$stage" \
      "${local_args[@]}"
  done
  build "$kind" "$REGISTRY/kuberec-$kind:$TAG" "$REPO" -f "images/$kind/Dockerfile" "${local_args[@]}"
  # The Dockerfiles FROM `runtime` (docker-bake passes it as a named context; the classic builder finds the tag).
  [ "$kind" = runtime ] && "${docker[@]}" tag "$REGISTRY/kuberec-runtime:$TAG" runtime
done
# -- Kubeflow Pipelines (scripts/cluster/build-kfp.sh built its binaries and UI) -----------------------------------
KFP_IMAGES=()
if want kfp && [ -x "$BIN/kfp-apiserver" ]; then
  context=$C/images/kfp
  rm -rf "$context" && mkdir -p "$context/bin" "$context/apiserver-config"
  for binary in kfp-apiserver kfp-persistence-agent kfp-scheduledworkflow kfp-driver kfp-launcher \
      argo-workflow-controller argoexec grpcwebproxy; do
    cp "$BIN/$binary" "$context/bin/"
  done
  # KFP's configuration without its MLflow plugin (on by default, pointed at an OpenDataHub address): kuberec keeps
  # one MLflow run per model build itself.
  "$PY" -c 'import json, sys; c = json.load(open(sys.argv[1])); c.pop("plugins", None); print(json.dumps(c, indent=2))' \
    "$SRC/kfp/backend/src/apiserver/config/config.json" > "$context/apiserver-config/config.json"
  base_arg=(--build-arg BASE_IMAGE=kuberec-local/debian:bookworm --build-arg "TAG_NAME=$KFP_VERSION")
  for target in apiserver persistenceagent scheduledworkflow driver launcher metadata-proxy; do
    KFP_IMAGES+=("kuberec-local/kfp-$target:$KFP_VERSION")
    build "kfp-$target" "kuberec-local/kfp-$target:$KFP_VERSION" "$context" -f images/kfp/binaries/Dockerfile \
      --target "$target" "${base_arg[@]}"
  done
  for target in workflow-controller argoexec; do
    image=kuberec-local/${target/#workflow/argo-workflow}:$ARGO_VERSION
    KFP_IMAGES+=("$image")
    build "argo-$target" "$image" "$context" -f images/kfp/binaries/Dockerfile --target "$target" "${base_arg[@]}"
  done
  KFP_IMAGES+=(kuberec-local/kfp-ui:$KFP_VERSION kuberec-local/mariadb:10.11 kuberec-local/kfp-metadata:1.17.1)
  build kfp-ui "kuberec-local/kfp-ui:$KFP_VERSION" "$C/kfp-ui" -f "$REPO/images/kfp/ui/Dockerfile" "${base_arg[@]}"
  build mariadb kuberec-local/mariadb:10.11 "$REPO/images/bases/mariadb"
  # ML Metadata's server: its own pinned set (images/kfp/metadata/requirements.txt), wheels served like kuberec's
  metadata_wheels=$C/kfp-metadata-wheels
  if [ "$(cat "$metadata_wheels/.stamp" 2>/dev/null)" != "$(sha256sum < images/kfp/metadata/requirements.txt)" ]; then
    PIP_CACHE_DIR=${PIP_CACHE_DIR:-$CACHE/pip} "$PY" -m pip download -q --only-binary :all: --python-version 3.11 \
      --platform manylinux2014_x86_64 -r images/kfp/metadata/requirements.txt -d "$metadata_wheels"
    sha256sum < images/kfp/metadata/requirements.txt > "$metadata_wheels/.stamp"
  fi
  ln -sfn "$metadata_wheels" "$serve_dir/kfp-metadata-wheels"
  build kfp-metadata kuberec-local/kfp-metadata:1.17.1 "$REPO" -f images/kfp/metadata/Dockerfile \
    --build-arg PYTHON_IMAGE=kuberec-local/python:3.11 --build-arg PIP_NO_INDEX=1 \
    --build-arg "PIP_FIND_LINKS=http://127.0.0.1:$port/kfp-metadata-wheels/"
elif want kfp; then
  log "no Kubeflow Pipelines binaries in $BIN yet (scripts/cluster/build-kfp.sh builds them): their images wait"
fi
stop artifact-server
# Layers of earlier builds that no tag uses any more (each kuberec image is several GB).
"${docker[@]}" image prune -f >/dev/null

# -- onto the node: only images whose ID the node does not have yet ---------------------------------------------
to_load=()
for image in registry.k8s.io/pause:3.10 kuberec-local/minio:dev kuberec-local/postgres:15 "$ROUTER_IMAGE" \
    "${KUBEREC_IMAGES[@]/#/$REGISTRY/kuberec-}" ${KFP_IMAGES[@]+"${KFP_IMAGES[@]}"}; do
  [[ "$image" == "$REGISTRY"/kuberec-* ]] && image=$image:$TAG
  id=$("${docker[@]}" image inspect -f '{{.Id}}' "$image" 2>/dev/null) || continue
  # containerd names images in full: docker.io/ for names without a registry host
  full=$image; [[ "${image%%/*}" == *.* ]] || full=docker.io/$image
  if [ "$(cat "$C/images/loaded-$(echo "$image" | tr '/:' '__')" 2>/dev/null)" = "$id" ] &&
     "${CTR[@]}" images ls -q | grep -qxF "$full"; then continue; fi
  to_load+=("$image")
done
if [ ${#to_load[@]} -gt 0 ]; then
  log "loading onto the node: ${to_load[*]}"
  start=$SECONDS
  "${docker[@]}" save "${to_load[@]}" | "${CTR[@]}" images import - >/dev/null
  for image in "${to_load[@]}"; do
    "${docker[@]}" image inspect -f '{{.Id}}' "$image" > "$C/images/loaded-$(echo "$image" | tr '/:' '__')"
  done
  log "loaded in $((SECONDS - start)) s"
fi
log "images ok (times and sizes: $report)"
