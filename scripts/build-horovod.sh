#!/usr/bin/env bash
# Build Horovod 0.28.1 against the venv's TensorFlow 2.21 and cache the wheel, or install the cached one.
# Horovod's XLA ops (only used with HOROVOD_ENABLE_XLA_OPS) no longer compile against TF >= 2.19's headers, so the
# build drops that one file. Gloo is built in (horovodrun --gloo); MPI is built only where Open MPI is installed
# (the MPIJob images) because an MPI-less Horovod cannot run under mpirun.
set -euo pipefail
PY=${PY:-.venv/bin/python}
CACHE=${KUBEREC_CACHE:-${KUBEREC_HOME:-.kuberec}/cache}/wheels
VERSION=0.28.1
TF_VERSION=$($PY -c 'import importlib.metadata as m; print(m.version("tensorflow"))')
if command -v mpirun >/dev/null 2>&1; then FLAVOUR=mpi; else FLAVOUR=gloo; fi
# The wheel only works with the TensorFlow it was built against: key the cache on it.
WHEEL_DIR=$CACHE/horovod-$VERSION-tf$TF_VERSION-$FLAVOUR
if $PY -c 'import horovod.tensorflow' 2>/dev/null; then
  echo "horovod: already installed"; exit 0
fi
if ! ls "$WHEEL_DIR"/horovod-*.whl >/dev/null 2>&1; then
  for tool in cmake g++ make; do
    command -v $tool >/dev/null || { echo "horovod: '$tool' is missing; install cmake, g++ and make (apt-get install cmake g++ make)" >&2; exit 1; }
  done
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  echo "horovod: building $VERSION against TensorFlow $TF_VERSION ($FLAVOUR), a few minutes on 2 cores"
  $PY -m pip download -q --no-deps --no-binary horovod horovod==$VERSION -d "$WORK"
  tar xzf "$WORK/horovod-$VERSION.tar.gz" -C "$WORK"
  sed -i '/xla_mpi_ops.cc/d' "$WORK/horovod-$VERSION/horovod/tensorflow/CMakeLists.txt"
  export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1
  if [ "$FLAVOUR" = gloo ]; then export HOROVOD_WITHOUT_MPI=1; else export HOROVOD_WITH_MPI=1; fi
  # Without MAKEFLAGS the build runs -j8 and thrashes a small machine.
  export MAKEFLAGS=${MAKEFLAGS:--j$(nproc)}
  $PY -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/wheel" "$WORK/horovod-$VERSION"
  mkdir -p "$WHEEL_DIR"
  cp "$WORK"/wheel/horovod-*.whl "$WHEEL_DIR/"
fi
$PY -m pip install -q --no-deps "$WHEEL_DIR"/horovod-*.whl
# horovod's runtime deps (cloudpickle, psutil, pyyaml, packaging) are pinned in constraints.txt
$PY -c 'import horovod.tensorflow as hvd; print("horovod:", hvd.__version__ if hasattr(hvd, "__version__") else "ok")'
