#!/usr/bin/env bash
# Databricks cluster init script (resources/recspark.job.yml): the stack recspark's models need, on
# every node, before Spark starts. Databricks ML runtimes after 15.4 LTS ship no Horovod, and none
# ships tf-keras at the TensorFlow the models are saved with, so:
#   - tensorflow, tf-keras and petastorm at the pins of requirements.txt (one source of the pins);
#   - with RECSPARK_HOROVOD=1 (the GPU train cluster): horovod built from source, patched by
#     tools/patch_horovod.py as `make setup` patches it (tools/setup.sh's HOROVOD_VERSION), with
#     TensorFlow, Gloo and, where a GPU is present, NCCL.
# RECSPARK_TOOLS: this folder in the bundle's workspace files (set in the job's spark_env_vars).
# Never run here (no Databricks, no GPU): README "Databricks" says what is validated and what is not.
set -euo pipefail
TOOLS=${RECSPARK_TOOLS:?set RECSPARK_TOOLS to the tools folder of the bundle}
PY=${RECSPARK_PYTHON:-/databricks/python/bin/python}
log() { echo "[recspark init] $*"; }

pins=$(grep -E '^(tensorflow|tf-keras|petastorm)==' "$TOOLS/../requirements.txt")
log "installing $(echo $pins)"
"$PY" -m pip install --quiet $pins

if [ "${RECSPARK_HOROVOD:-0}" = 1 ]; then
  version=$(sed -n 's/^HOROVOD_VERSION=//p' "$TOOLS/setup.sh")
  work=$(mktemp -d)
  log "building horovod $version from patched source in $work"
  "$PY" -m pip install --quiet cmake
  "$PY" -m pip download --quiet --no-deps --no-binary :all: "horovod==$version" -d "$work"
  tar -xzf "$work/horovod-$version.tar.gz" -C "$work"
  "$PY" "$TOOLS/patch_horovod.py" "$work/horovod-$version"
  gpu=()
  if command -v nvidia-smi > /dev/null && nvidia-smi > /dev/null 2>&1; then
    # A GPU build compiles xla_mpi_ops.cc, whose XLA headers TensorFlow no longer ships (see
    # patch_horovod.py, edit 1): it registers XLA-only ops that recspark does not use.
    sed -i '/xla_mpi_ops.cc/d' "$work/horovod-$version/horovod/tensorflow/CMakeLists.txt"
    gpu=(HOROVOD_GPU_OPERATIONS=NCCL)
  fi
  (
    cd "$work/horovod-$version"
    env HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_PYTORCH=1 \
      HOROVOD_WITHOUT_MXNET=1 "${gpu[@]}" MAKEFLAGS="-j$(nproc)" \
      "$PY" -m pip install --quiet --no-build-isolation --no-deps .
  )
  TF_USE_LEGACY_KERAS=1 "$PY" -c "import horovod.tensorflow as hvd; assert hvd.gloo_built(), 'horovod built without Gloo'"
  log "horovod $version built"
fi
