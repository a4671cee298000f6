#!/usr/bin/env bash
# make setup: everything kuberec needs on this machine, idempotent and quick when already done.
#   1. Debian packages (only as root; otherwise says what to install)
#   2. the virtualenv with the pinned stack (constraints.txt), reinstalled only when the pins change
#   3. Horovod built against the venv's TensorFlow, wheel cached under the project's cache dir
#   4. Delta Lake jars resolved once into the cache (Spark starts without Ivy)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
KUBEREC_HOME=${KUBEREC_HOME:-.kuberec}
CACHE=${KUBEREC_CACHE:-$KUBEREC_HOME/cache}
export KUBEREC_HOME PIP_CACHE_DIR=${PIP_CACHE_DIR:-$CACHE/pip}
DELTA_VERSION=4.0.1

# -- 1. Debian packages --------------------------------------------------------------------------------------
# A tool already on PATH (a JDK from elsewhere, say) is good enough; only what is absent gets installed.
missing=()
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
for tool_package in cmake:cmake g++:g++ make:make mvn:maven java:default-jre-headless chromium:chromium ${KUBEREC_EXTRA_TOOLS:-}; do
  command -v "${tool_package%%:*}" >/dev/null || missing+=("${tool_package#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: WARNING: missing Debian packages ${missing[*]}; install them as root" \
         "(apt-get install ${missing[*]}). Without dataset-fashion-mnist, 'kuberec data fashion-mnist'" \
         "downloads the files instead." >&2
  fi
fi

# -- 2. virtualenv with the pinned stack ---------------------------------------------------------------------
stamp=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.kuberec-stamp 2>/dev/null)" != "$stamp" ]; then
  echo "setup: installing the pinned Python stack into .venv (a few minutes the first time)"
  [ -x .venv/bin/python ] || $PYTHON -m venv .venv
  .venv/bin/python -m pip install -q --upgrade "pip==25.3"
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
  # What an earlier pin set installed and this one does not (MLServer, say) goes: .venv holds what CI installs.
  .venv/bin/python - <<'PY' | xargs -r .venv/bin/python -m pip uninstall -q -y
import importlib.metadata, re
def canonical(name): return re.sub(r"[-_.]+", "-", name).lower()
pinned = {canonical(re.split(r"[=@ ]", line)[0]) for line in open("constraints.txt") if line.strip()}
for dist in importlib.metadata.distributions():
    name = canonical(dist.metadata["Name"])
    if name not in pinned | {"pip", "kuberec"}:
        print(name)
PY
  echo "$stamp" > .venv/.kuberec-stamp
fi

# -- 3. Horovod ----------------------------------------------------------------------------------------------
PY=.venv/bin/python KUBEREC_HOME=$KUBEREC_HOME scripts/build-horovod.sh

# -- 4. Delta Lake jars --------------------------------------------------------------------------------------
JARS=$CACHE/jars
for artifact in delta-spark_2.13 delta-storage; do
  if [ ! -f "$JARS/$artifact-$DELTA_VERSION.jar" ]; then
    echo "setup: fetching io.delta:$artifact:$DELTA_VERSION into $JARS"
    mvn -q -B dependency:copy -Dartifact=io.delta:$artifact:$DELTA_VERSION -DoutputDirectory="$JARS" >/dev/null
  fi
done
echo "setup: ok"
