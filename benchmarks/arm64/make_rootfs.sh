#!/usr/bin/env bash
# Build (or refresh) an arm64 root filesystem and install bcedge into it, for running
# the edge runtime on 64-bit ARM under qemu-user emulation on an x86 machine.
#
#   benchmarks/arm64/make_rootfs.sh [--unpacked] [debian12|ubuntu2204]      (default: debian12)
#
# debian12   Debian 12 "bookworm" arm64, Python 3.11: the Raspberry Pi OS (Pi 5) base.
# ubuntu2204 Ubuntu 22.04 "jammy" arm64, Python 3.10: the JetPack 6 base. Needs
#            ports.ubuntu.com (arm64 Ubuntu is not on archive.ubuntu.com).
#
# Needs root (debootstrap/mmdebstrap, chroot, binfmt_misc). Installs the host tools it needs
# from Debian (qemu-user-static, debootstrap, binfmt-support; mmdebstrap for --unpacked),
# registers qemu-aarch64 with binfmt_misc when it is not, builds the root filesystem (with dcmtk and
# dicom3tools for the DICOM tests), then installs the bcedge wheel built from the working
# tree with the device extras [dicom,fast,tflite,seg,serve] and [onnx] into /opt/venv.
# Wheels only (--only-binary=:all:): a dependency with no aarch64 wheel fails by name
# (wheel_check.py then lists which).
#
# Install (BCEDGE_ARM64_PIP): "cross" (default): the host's pip resolves and unpacks the
#   aarch64 wheels for the root filesystem's Python and glibc (--platform/--python-version/
#   --target), bytecode compiled on the host; the packages then only run under emulation.
#   "emulated": pip itself runs inside the root filesystem, as on a device (tens of minutes
#   on two shared cores: pip's own Python is emulated).
#
# --unpacked: mmdebstrap --variant=extract: the host's apt resolves and downloads, every .deb
#   is extracted on the host, no maintainer script runs (those run under emulation and take
#   20+ min on two shared cores); ldconfig and the base passwd/group files are the only
#   fix-ups. Enough for Python wheels and dcmtk; used by the CI smoke test. Root:
#   <distro>-unpacked/. Without it: debootstrap minbase, maintainer scripts under emulation.
#
# Cache: ${BCEDGE_ARM64_CACHE:-$HOME/.cache/bcedge-arm64}/<distro>/ holds the root
# filesystem, the downloaded .debs and pip's cache; a second run only reinstalls the
# bcedge wheel (seconds). BCEDGE_ARM64_REBUILD=1 starts the root filesystem over.
# Each step's wall and CPU seconds (NAME=, NAME_cpu=) go to <cache>/<distro>/timings.txt.
#
# Exit codes: 0 ready; 2 usage; 3 host tool or binfmt problem; 4 mirror unreachable;
# 5 the root filesystem build failed (debootstrap / mmdebstrap: a download or a package
# problem, see <cache>/<distro>/rootfs.log); 6 a dependency has no aarch64 wheel / pip failed;
# 7 a Debian package this script lists is not in the archive (the list needs fixing).
set -euo pipefail

unpacked=0
if [ "${1:-}" = --unpacked ]; then
  unpacked=1
  shift
fi
distro="${1:-debian12}"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${BCEDGE_ARM64_CACHE:-$HOME/.cache/bcedge-arm64}"
# shellcheck source=benchmarks/arm64/common.sh
source "$here/common.sh"

case "$distro" in
  debian12)
    suite=bookworm
    mirror="${BCEDGE_ARM64_MIRROR:-http://deb.debian.org/debian}"
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    keyring_pkg=debian-archive-keyring
    components=main
    py=3.11
    glibc_minor=36
    wheel_target=debian12-rpi5
    ;;
  ubuntu2204)
    suite=jammy
    mirror="${BCEDGE_ARM64_MIRROR:-http://ports.ubuntu.com/ubuntu-ports}"
    keyring=/usr/share/keyrings/ubuntu-archive-keyring.gpg
    keyring_pkg=""  # ubuntu-keyring: not in every Debian host's archive; a missing keyring stops with 3
    components=main,universe
    py=3.10
    glibc_minor=35
    wheel_target=jetpack6-ubuntu2204
    ;;
  *)
    echo "error: unknown distro '$distro' (debian12 or ubuntu2204)" >&2
    exit 2
    ;;
esac

pip_mode="${BCEDGE_ARM64_PIP:-cross}"
host_py="${BCEDGE_HOST_PYTHON:-$repo/.venv/bin/python}"
[ -x "$host_py" ] || host_py="$(command -v python3)"
[ "$(id -u)" -eq 0 ] || die 3 "needs root (debootstrap, chroot, binfmt_misc)"
base="$cache/$distro"
[ $unpacked -eq 1 ] && base="$cache/$distro-unpacked"
root="$base/root"
mkdir -p "$base/debs" "$base/pip" "$base/wheels"
lock_root "$base"
timings="$base/timings.txt"
: >"$timings"

# ---------------------------------------------------------------- host tools
step_start host-tools
need=()
command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
[ $unpacked -eq 1 ] && { command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap); }
command -v update-binfmts >/dev/null 2>&1 || need+=(binfmt-support)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The archive's signing keys (a non-Debian CI host may lack them).
[ -f "$keyring" ] || [ -z "$keyring_pkg" ] || need+=("$keyring_pkg")
if [ ${#need[@]} -gt 0 ]; then
  apt-get install -y -q "${need[@]}" || { apt-get update -q && apt-get install -y -q "${need[@]}"; } ||
    die 3 "could not install ${need[*]} from Debian"
fi
step_end

# ---------------------------------------------------------------- binfmt_misc
step_start binfmt
ensure_binfmt
step_end

# ---------------------------------------------------------------- root filesystem
if [ "${BCEDGE_ARM64_REBUILD:-0}" = 1 ] && [ -d "$root" ]; then
  unmount_all "$root"
  rm -rf --one-file-system "$root"
fi
rootfs_failed() {
  # rootfs_failed TOOL: 7 when the archive lacks a package of $include (apt's / debootstrap's
  # words for it): the list is this script's to fix, so CI fails; else 5 (a download, mirror or
  # host problem: CI skips the smoke test with the reason).
  local log="$base/rootfs.log" missing='Unable to locate package|has no installation candidate|unmet dependencies|find these debs'
  grep -qE "$missing" "$log" &&
    die 7 "$1 could not resolve the package list for $distro ($include): $(grep -m 1 -E "$missing" "$log")"
  die 5 "$1 failed; see $log (last lines: $(tail -n 3 "$log" | tr '\n' ' '))"
}

if [ ! -f "$root/.bcedge-rootfs-done" ]; then
  step_start rootfs
  curl -fsS -m 30 -o /dev/null "$mirror/dists/$suite/Release" ||
    die 4 "$mirror is unreachable from here: no $distro arm64 root filesystem (Release file of $suite not found)"
  [ -f "$keyring" ] || die 3 "archive keyring $keyring missing on the host"
  unmount_all "$root"
  rm -rf --one-file-system "$root"
  # What bcedge needs that pip does not bring: Python with venv, CA certificates for pip,
  # dcmtk/dicom3tools for the DICOM oracle and serve tests, libgomp1 for onnxruntime.
  include=python3,python3-venv,ca-certificates,dcmtk,dicom3tools,libgomp1,procps
  if [ $unpacked -eq 1 ]; then
    # mmdebstrap --variant=extract: the host's apt resolves the dependencies and downloads
    # the .debs (several at a time), the host's dpkg-deb extracts them; no maintainer script
    # runs (under emulation those take 20+ min on two shared cores). ?essential adds the
    # Essential:yes set (sh, coreutils: the chroot's nice); minbase's apt, mount, e2fsprogs and
    # tzdata are left out (neither bcedge nor its tests use them). debootstrap --foreign, used
    # before, resolved in shell and fetched one .deb at a time: 45 CPU-s for this step against
    # 16 CPU-s (cold builds on a 2-core machine at load 7-20). The .debs are kept in $base/debs (copied
    # in before apt runs, out after extraction: the extract variant runs no customize hook) so
    # that a rebuild downloads nothing.
    BCEDGE_DEBS="$base/debs" nice -n 15 mmdebstrap --mode=root --variant=extract --architectures=arm64 \
      --components="$components" --keyring="$keyring" --include='?essential' --include="$include" \
      --setup-hook='mkdir -p "$1/var/cache/apt/archives" && find "$BCEDGE_DEBS" -maxdepth 1 -name "*.deb" -exec cp -t "$1/var/cache/apt/archives" {} +' \
      --extract-hook='find "$1/var/cache/apt/archives" -maxdepth 1 -name "*.deb" -exec cp -u -t "$BCEDGE_DEBS" {} +' \
      "$suite" "$root" "$mirror" >"$base/rootfs.log" 2>&1 || rootfs_failed mmdebstrap
    # The fix-ups maintainer scripts would have made: the base passwd/group files, ld.so.cache.
    for f in passwd group; do
      [ -s "$root/etc/$f" ] || cp "$root/usr/share/base-passwd/$f.master" "$root/etc/$f"
    done
    chroot "$root" /sbin/ldconfig || die 5 "ldconfig failed inside the root filesystem"
  else
    # minbase, maintainer scripts run under emulation (qemu through binfmt_misc).
    nice -n 15 debootstrap --arch=arm64 --variant=minbase --components="$components" \
      --keyring="$keyring" --cache-dir="$base/debs" --include="$include" \
      "$suite" "$root" "$mirror" >"$base/rootfs.log" 2>&1 || rootfs_failed debootstrap
  fi
  # The stamp says how and when this root was built (run_suite.sh's record, report.py, names it:
  # a record must say on which root its steps ran).
  if [ $unpacked -eq 1 ]; then builder="mmdebstrap --variant=extract"; else builder="debootstrap --variant=minbase"; fi
  printf 'built_by=%s\nbuilt_at=%s\nsuite=%s\n' "$builder" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$suite" >"$root/.bcedge-rootfs-done"
  step_end
fi

# ---------------------------------------------------------------- venv + bcedge
# The bcedge wheel is pure Python: built on the host from the working tree.
step_start bcedge-wheel
rm -rf "$base/wheels"/bcedge-*.whl
build_dir="$(mktemp -d)"
git -C "$repo" ls-files -z -co --exclude-standard | (cd "$repo" && tar --null -T - -cf -) | tar -C "$build_dir" -xf -
"$host_py" -m pip wheel -q --no-deps -w "$base/wheels" "$build_dir" || die 6 "could not build the bcedge wheel from $repo"
rm -rf "$build_dir"
wheel="$(ls "$base"/wheels/bcedge-*.whl)"
step_end

mount_all "$root" "$repo" "$base/pip"
trap 'unmount_all "$root"' EXIT
site="$root/opt/venv/lib/python$py/site-packages"
extras="dicom,fast,tflite,seg,serve,onnx"
stamp="$(cat "$repo/pyproject.toml" <(echo "$extras $pip_mode") | sha256sum | cut -c1-16)"

step_start venv
if [ ! -x "$root/opt/venv/bin/python" ]; then
  if [ "$pip_mode" = emulated ]; then
    in_root "$root" nice -n 15 python3 -m venv /opt/venv || die 6 "python3 -m venv failed inside the root filesystem"
  else
    in_root "$root" nice -n 15 python3 -m venv --without-pip /opt/venv || die 6 "python3 -m venv failed"
  fi
fi
step_end

no_wheel() {
  echo "pip could not install bcedge[$extras] from aarch64 wheels for Python $py; per requirement:" >&2
  "$host_py" "$here/wheel_check.py" --only "$wheel_target" >&2 || true
  die 6 "a dependency of bcedge[$extras] has no aarch64 wheel for Python $py (see the list above)"
}

# Dependencies come as wheels only (--only-binary=:all:), so a missing aarch64 build is
# reported by name instead of a failing source build.
step_start pip-install
if [ "$pip_mode" = emulated ]; then
  # pip itself runs on aarch64 (what a device does); slow under emulation (pip's own Python).
  in_root "$root" nice -n 15 /opt/venv/bin/python -m pip install -q --no-compile --only-binary=:all: \
    --force-reinstall --no-deps "/opt/wheels/$(basename "$wheel")" || no_wheel
  in_root "$root" nice -n 15 /opt/venv/bin/python -m pip install -q --no-compile --only-binary=:all: \
    "/opt/wheels/$(basename "$wheel")[$extras]" pytest || no_wheel
elif [ "$(cat "$site/.bcedge-deps" 2>/dev/null)" = "$stamp" ]; then
  # Dependencies unchanged since the last run: only the bcedge wheel is replaced.
  "$host_py" -m pip install -q --no-compile --no-deps --upgrade --target "$site" "$wheel" ||
    die 6 "could not reinstall the bcedge wheel"
else
  # Cross-install: the host's pip resolves and unpacks the aarch64 wheels for the root
  # filesystem's Python and glibc (seconds; pip under emulation takes tens of minutes here).
  platforms=(--platform manylinux2014_aarch64)
  for m in $(seq 17 "$glibc_minor"); do platforms+=(--platform "manylinux_2_${m}_aarch64"); done
  tmp_site="$(mktemp -d "$root/opt/site.XXXXXX")"
  # PIP_CONFIG_FILE=/dev/null: this machine's pip configuration (local x86 indexes) plays no part.
  PIP_CONFIG_FILE=/dev/null "$host_py" -m pip install -q --no-compile --only-binary=:all: "${platforms[@]}" \
    --python-version "$py" \
    --implementation cp --abi "cp${py/./}" --target "$tmp_site" "$wheel[$extras]" pytest || {
    rm -rf "$tmp_site"
    no_wheel
  }
  rm -rf "$tmp_site/bin" "$site"
  mv "$tmp_site" "$site"
  echo "$stamp" >"$site/.bcedge-deps"
fi
if [ "$pip_mode" != emulated ]; then
  # pip --target writes no console scripts for the target: the one bcedge declares, by hand.
  printf '#!/opt/venv/bin/python\nimport sys\n\nfrom bcedge.cli import main\n\nsys.exit(main())\n' >"$root/opt/venv/bin/bcedge"
  chmod 755 "$root/opt/venv/bin/bcedge"
  # Bytecode is the same on every CPU: compiled on the host when its Python matches, so the
  # emulated imports do not recompile every module on each run.
  if [ "$("$host_py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$py" ]; then
    "$host_py" -m compileall -q -j 0 "$site" >/dev/null 2>&1 || true
  fi
fi
step_end

# What is installed (name==version), read on the host from the dist-info folders.
for d in "$site"/*.dist-info; do
  n="$(basename "$d" .dist-info)"
  echo "${n%-*}==${n##*-}"
done | sort >"$base/pip-freeze.txt"
in_root "$root" /opt/venv/bin/python -c 'import bcedge, platform; print("bcedge", bcedge.__version__, "on", platform.machine())' ||
  die 6 "bcedge does not import inside the root filesystem"
echo "arm64 $distro ready: $root (venv /opt/venv, Python $py, install: $pip_mode)"
echo "timings (s): $(tr '\n' ' ' <"$timings")"
