# Shared helpers of benchmarks/arm64/*.sh (sourced, not run).
# Expects: $timings (file for step timings).

die() {
  # die CODE MESSAGE: one error line, documented exit code.
  local code="$1"
  shift
  echo "error: $*" >&2
  exit "$code"
}

children_cpu_s() {
  # CPU seconds (user + sys) of every child the script's shell ($$, also from a subshell) has
  # waited for: cutime + cstime of /proc/$$/stat (fields 16, 17 counted from the pid; read
  # after the ") " that ends the command name, which may hold spaces). A step's CPU time is
  # load-independent, unlike its wall time on a shared machine.
  # Printed to the clock tick (1/CLK_TCK s), not rounded: two readings rounded to 0.1 s made a
  # 0.01 s step read as 0.1 s.
  sed 's/^.*) //' "/proc/$$/stat" | awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }'
}

step_start() {
  _step_name="$1"
  _step_t0="$(date +%s.%N)"
  _step_cpu0="$(children_cpu_s)"
  echo "== $1 ($(date -u +%H:%M:%S))" >&2
}

step_end() {
  # NAME=wall seconds and NAME_cpu=CPU seconds of the step's commands (the host's and the
  # emulated ones': qemu-user runs in the child process).
  local dt cpu
  dt="$(awk -v a="$_step_t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
  cpu="$(awk -v a="$_step_cpu0" -v b="$(children_cpu_s)" 'BEGIN { printf "%.2f", b - a }')"
  echo "$_step_name=$dt" >>"$timings"
  echo "${_step_name}_cpu=$cpu" >>"$timings"
  echo "   $_step_name: ${dt}s (CPU ${cpu}s)" >&2
}

ensure_binfmt() {
  # qemu-aarch64 registered with binfmt_misc, with the F (fix binary) flag so that the
  # interpreter is found inside a chroot without copying it there.
  local entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
      die 3 "cannot mount binfmt_misc (needs root in a VM or a privileged container)"
  fi
  if [ ! -e "$entry" ]; then
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || update-binfmts --import qemu-aarch64 >/dev/null 2>&1 || true
  fi
  [ -e "$entry" ] || die 3 "qemu-aarch64 is not registered with binfmt_misc (update-binfmts --enable qemu-aarch64 failed)"
  grep -q '^enabled' "$entry" || echo 1 >"$entry"
  grep -q '^flags:.*F' "$entry" ||
    die 3 "qemu-aarch64 binfmt entry lacks the F flag; re-register it (apt-get install --reinstall qemu-user-static)"
}

lock_root() {
  # One run per root filesystem at a time: each unmounts everything under it when it ends.
  exec 9>"$1/.lock"
  if ! flock -n 9; then
    echo "waiting for the other run that uses $1 ..." >&2
    flock 9
  fi
}

mount_all() {
  # mount_all ROOT REPO PIPCACHE: kernel filesystems, the working tree (read-only, /src),
  # the shared data (read-only, /data when it exists), bcedge wheels, pip's cache, /out.
  local root="$1" repo="$2" pip="$3" base
  base="$(dirname "$root")"
  mkdir -p "$root/src" "$root/data" "$root/opt/wheels" "$root/root/.cache/pip" "$base/out" "$root/out"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  # The host's CA bundle (it may hold a proxy's CA) for pip inside the root filesystem.
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/host-ca.crt" 2>/dev/null || true
  mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
  # qemu-user shows the host's x86 /proc/cpuinfo to aarch64 programs; XNNPACK's cpuinfo
  # library parses it, finds no ARM core and LiteRT then segfaults in allocate_tensors
  # (seen here with qemu 7.2). An aarch64 cpuinfo of the emulated core replaces it.
  fake_cpuinfo >"$base/cpuinfo"
  grep -q " $root/proc/cpuinfo " /proc/mounts || mount --bind "$base/cpuinfo" "$root/proc/cpuinfo"
  mountpoint -q "$root/sys" || mount -t sysfs sysfs "$root/sys"
  mountpoint -q "$root/dev" || mount --bind /dev "$root/dev"
  mountpoint -q "$root/dev/pts" || mount -t devpts devpts "$root/dev/pts" 2>/dev/null || true
  mountpoint -q "$root/tmp" || mount -t tmpfs tmpfs "$root/tmp"
  mountpoint -q "$root/dev/shm" || mount -t tmpfs tmpfs "$root/dev/shm"
  ro_bind "$repo" "$root/src"
  local data="${BCEDGE_DATA:-$repo/../shared/data}"
  [ -d "$data" ] && ro_bind "$data" "$root/data"
  mountpoint -q "$root/opt/wheels" || mount --bind "$base/wheels" "$root/opt/wheels"
  mountpoint -q "$root/root/.cache/pip" || mount --bind "$pip" "$root/root/.cache/pip"
  mountpoint -q "$root/out" || mount --bind "$base/out" "$root/out"
}

fake_cpuinfo() {
  # /proc/cpuinfo of a Cortex-A76 (Raspberry Pi 5's core; what QEMU_CPU=cortex-a76 emulates),
  # one entry per host CPU.
  local i
  for i in $(seq 0 $(($(nproc) - 1))); do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\n' "$i"
    printf 'Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n'
    printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n'
  done
}

ro_bind() {
  mountpoint -q "$2" && return 0
  mount --bind "$1" "$2"
  mount -o remount,bind,ro "$2"
}

unmount_all() {
  # Every mount under ROOT, deepest first.
  local root="$1" m
  [ -d "$root" ] || return 0
  root="$(cd "$root" && pwd -P)"
  awk -v r="$root" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}

in_root() {
  # in_root ROOT CMD...: run CMD inside the arm64 root filesystem with a clean environment.
  # --foreground keeps CMD in the caller's process group, so stopping the caller (the CI cap,
  # a kill of the suite's group) stops the emulated command too.
  # QEMU_CPU=cortex-a76 (Raspberry Pi 5's core; Jetson Orin's A78AE has the same ARMv8.2
  # features: NEON, fp16, dot product; no SVE, no i8mm) so that XNNPACK picks the kernels a
  # device would, not those of qemu's default "max" CPU.
  local root="$1"
  shift
  timeout --foreground --kill-after=30 "${BCEDGE_ARM64_STEP_TIMEOUT:-3600}" env -i HOME=/root PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 TERM=dumb PYTHONDONTWRITEBYTECODE=1 PIP_CERT=/etc/host-ca.crt PIP_DEFAULT_TIMEOUT=180 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 QEMU_CPU="${BCEDGE_ARM64_CPU:-cortex-a76}" BCEDGE_DATA=/data \
    chroot "$root" "$@"
}
