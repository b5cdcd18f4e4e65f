#!/usr/bin/env bash
# Run the bcedge runtime on aarch64 under qemu-user emulation and compare it with x86.
#
#   benchmarks/arm64/run_suite.sh [--distro debian12] [--unpacked] [--quick] [--real N]
#                                 [--steps cpu,demo,...] [BUNDLE ...]
#
# BUNDLE: bundle folders inside the repository (default: every bcedge/*/ and models/*/ with
# a manifest.json: the shipped bundles), so the suite can be rerun when a new model ships.
# Needs the root filesystem of make_rootfs.sh (run it first, with the same --unpacked; it is cached).
#
# Steps, each timed and logged under <cache>/<distro>/out/suite/:
#   cpu        the emulated CPU (QEMU_CPU, default cortex-a76) and what numpy detects on it
#   demo       bcedge demo
#   artifacts  every artifact of every bundle on the sample scan + real scans, on aarch64 and
#              on x86 (the host's .venv), compared: FP32 identical masks and findings,
#              INT8/FP16 mask Dice >= 0.98
#   serve      bcedge serve round trip on loopback (storescu -> node -> SEG at storescp)
#   infer      bcedge infer --json with each bundle's default artifact on the same scans
#   benchmark  bcedge benchmark --runs 3 of every artifact, one artifact per command (each with the
#              step timeout), and the same bundle on x86: Dice per artifact on both (emulated
#              timings: NOT device timings). Bounded by its options, not by a weaker benchmark:
#              the sample scan only, 1 thread, no warm-up, one end-to-end image per row, and
#              neither the --backend auto choice (the choice step tests it) nor the GEMM
#              ceiling (a speed figure, meaningless emulated): 2 + runs model calls per
#              artifact. The defaults make a row 64 calls (1 + 8 end-to-end + 5 warm-up + 50
#              runs) plus the auto choice's acceptance check (4 images) and timing per candidate.
#   choice     the artifact choice and on-device acceptance check (tests/test_choice.py: a fake
#              slow and a fake wrong artifact, the cache, and every shipped bundle's artifacts
#              against its acceptance data, here on the emulated aarch64 CPU)
#   tests      runtime tests: pipeline, postprocess, bundle, backends, CLI infer, DICOM reader,
#              outputs (no TensorFlow in the root filesystem: its tests skip; the DICOM tests
#              use Debian's arm64 dcmtk/dicom3tools)
# --quick: the CI smoke test: cpu, a few runtime tests and demo only.
# --real N: real scans used (default 4: two mini-MIAS, two CDD-CESM; 0: the sample scan only).
# --steps: run only these steps; the results of the others (from an earlier run) are kept.
# BCEDGE_ARM64_STEP_TIMEOUT: seconds each emulated command may run (default 3600; rc 124).
# BCEDGE_ARM64_NICE: niceness of the emulated commands (default 15).
#
# Writes benchmarks/results/arm64_<distro>.json (not with --quick). Exit 0 when every step
# passed, 1 when one failed, 3 when the root filesystem is missing.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${BCEDGE_ARM64_CACHE:-$HOME/.cache/bcedge-arm64}"
# shellcheck source=benchmarks/arm64/common.sh
source "$here/common.sh"

distro=debian12
quick=0
unpacked=0
n_real=4
steps=""
bundles=()
while [ $# -gt 0 ]; do
  case "$1" in
    --distro) distro="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --unpacked) unpacked=1; shift ;;
    --real) n_real="$2"; shift 2 ;;
    --steps) steps=",$2,"; shift 2 ;;
    -h | --help) sed -n '2,40p' "$0"; exit 0 ;;
    -*) die 2 "unknown option $1" ;;
    *) bundles+=("$1"); shift ;;
  esac
done

flavour="$distro"
[ $unpacked -eq 1 ] && flavour="$distro-unpacked"
base="$cache/$flavour"
root="$base/root"
[ -x "$root/opt/venv/bin/bcedge" ] ||
  die 3 "no arm64 $flavour environment in $base; run benchmarks/arm64/make_rootfs.sh $([ $unpacked -eq 1 ] && echo "--unpacked ")$distro first"
[ "$(id -u)" -eq 0 ] || die 3 "needs root (chroot)"
lock_root "$base"
ensure_binfmt

if [ ${#bundles[@]} -eq 0 ]; then
  for m in "$repo"/bcedge/*/manifest.json "$repo"/models/*/manifest.json; do
    [ -f "$m" ] && bundles+=("${m#"$repo"/}") && bundles[-1]="${bundles[-1]%/manifest.json}"
  done
fi
for b in "${bundles[@]}"; do
  b="${b%/}"
  [ -f "$repo/$b/manifest.json" ] || die 2 "$b is not a bundle folder inside $repo (no manifest.json)"
done

data_host="${BCEDGE_DATA:-$repo/../shared/data}"
# The sample scan (synthetic DICOM) and real scans: screen-film MIAS PNGs with masses,
# CDD-CESM low-energy (DM) JPEGs; paths relative to the data folder (/data in the chroot).
real_scans=(mini-mias/images/mdb028.png cdd-cesm/setA/images/flipped_P108_L_DM_CC.jpg
  mini-mias/images/mdb001.png cdd-cesm/setA/images/flipped_P132_R_DM_MLO.jpg mini-mias/images/mdb010.png)
[[ "$n_real" =~ ^[0-9]+$ ]] || die 2 "--real takes a number"
real_scans=("${real_scans[@]:0:$n_real}")
scans_arm=(/src/bcedge/examples/phantom_lcc.dcm)
scans_x86=("$repo/bcedge/examples/phantom_lcc.dcm")
if [ -d "$data_host" ]; then
  for s in "${real_scans[@]}"; do
    [ -f "$data_host/$s" ] && scans_arm+=("/data/$s") && scans_x86+=("$data_host/$s")
  done
else
  echo "note: no real data at $data_host: sample scan only" >&2
fi

# The smoke test has its own folder: it must not wipe the logs of the full suite's steps,
# which --steps reruns keep and report.py reads.
out="$base/out/suite"
[ $quick -eq 1 ] && out="$base/out/quick"
[ -z "$steps" ] && rm -rf "$out"
mkdir -p "$out"
timings="$out/timings.txt"
status="$out/status.txt"
touch "$timings" "$status"
mount_all "$root" "$repo" "$base/pip"
trap 'unmount_all "$root"' EXIT

# step NAME CMD...: run, log to $out/NAME.log, record rc and seconds.
step() {
  local name="$1" rc
  shift
  if [ -n "$steps" ] && [[ "$steps" != *",$name,"* ]]; then
    return 0
  fi
  sed -i "/^$name=/d" "$status" "$timings"
  step_start "$name"
  "$@" >"$out/$name.log" 2>&1
  rc=$?
  step_end
  echo "$name=$rc" >>"$status"
  [ $rc -eq 0 ] && echo "   ok" >&2 || echo "   FAILED (rc $rc): tail of $out/$name.log:" >&2
  [ $rc -eq 0 ] || tail -n 15 "$out/$name.log" | sed 's/^/     /' >&2
}

# BCEDGE_ARM64_NICE: the emulated commands' niceness (default 15: they yield to other work on a
# shared machine; 0 for a correctness run that should finish while other jobs run at nice >= 10).
arm() { in_root "$root" nice -n "${BCEDGE_ARM64_NICE:-15}" "$@"; }

cpu_probe='import json, platform
try:
    from numpy._core._multiarray_umath import __cpu_features__ as f
except ImportError:  # NumPy 1.x
    from numpy.core._multiarray_umath import __cpu_features__ as f
print(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
                  "numpy_cpu_features": sorted(k for k, v in f.items() if v)}))'

pytest_args=(-q -p no:cacheprovider --rootdir /src)
runtime_tests=(
  /src/tests/test_pipeline.py /src/tests/test_postprocess.py /src/tests/test_bundle.py
  /src/tests/test_backends.py /src/tests/test_cli_infer.py /src/tests/test_dicom.py /src/tests/test_outputs.py
)
quick_tests=(/src/tests/test_pipeline.py /src/tests/test_postprocess.py)

demo_json() { arm /opt/venv/bin/bcedge demo --out /out/demo --json >"$out/demo.json"; }
infer_all() {
  local b rc=0
  for b in "${bundles[@]}"; do
    echo "### ${b%/}"
    arm /opt/venv/bin/bcedge infer --model "/src/${b%/}" --out "/out/infer/$(basename "$b")" --json \
      "${scans_arm[@]}" >"$out/infer-$(basename "$b").json" || rc=$?
  done
  return $rc
}
bundle_args_arm=()
bundle_args_x86=()
bench_models=()
for b in "${bundles[@]}"; do
  bundle_args_arm+=(--bundle "/src/${b%/}")
  bundle_args_x86+=(--bundle "$repo/${b%/}")
  bench_models+=(--model "/src/${b%/}")
done

# Most telling first: under emulation on two shared cores each step takes minutes, and a run
# cut short still leaves the steps it finished (report.py reads whatever is there).
step cpu arm /opt/venv/bin/python -c "$cpu_probe"
if [ $quick -eq 1 ]; then
  step tests arm /opt/venv/bin/python -m pytest "${pytest_args[@]}" "${quick_tests[@]}"
  step demo demo_json
  cat "$out/cpu.log" >&2
  tail -n 1 "$out/tests.log" >&2
  grep -q '=[^0]' "$status" && exit 1
  exit 0
fi
step demo demo_json
step artifacts-arm arm /opt/venv/bin/python /src/benchmarks/arm64/segment_all.py run --out /out/seg_arm \
  "${bundle_args_arm[@]}" "${scans_arm[@]}"
step artifacts-x86 nice -n 15 "$repo/.venv/bin/python" "$here/segment_all.py" run --out "$base/out/seg_x86" \
  "${bundle_args_x86[@]}" "${scans_x86[@]}"
step compare "$repo/.venv/bin/python" "$here/segment_all.py" compare "$base/out/seg_x86" "$base/out/seg_arm" \
  --json "$out/compare.json"
step serve arm /opt/venv/bin/python -m pytest "${pytest_args[@]}" \
  "/src/tests/test_serve_e2e.py::test_bcedge_serve_cli_scan_in_seg_out"
step infer infer_all
step choice arm /opt/venv/bin/python -m pytest "${pytest_args[@]}" /src/tests/test_choice.py
# The benchmark step's bounds (see the header); BCEDGE_ARM64_BENCH_RUNS: timed model calls per row.
bench_opts=(--runs "${BCEDGE_ARM64_BENCH_RUNS:-3}" --warmup 0 --threads 1 --phantoms 0 --e2e-min 1
  --no-auto-choice --no-gemm-ceiling --no-isolate --quiet)
benchmark_all() {
  # x86 first (seconds), one command per bundle, the same options, for the Dice comparison;
  # then aarch64 one command per artifact (--formats FORMAT/PRECISION), so that an artifact
  # past the step timeout (rc 124) leaves the rows of those before it.
  local b name rc=0 r token
  for b in "${bundles[@]}"; do
    b="${b%/}"
    name="$(basename "$b")"
    rm -f "$out/benchmark-$name"*.json "$out/benchmark-x86-$name.json"
    echo "### $b on x86 ($(date -u +%H:%M:%S))"
    nice -n 15 "$repo/.venv/bin/bcedge" benchmark --model "$repo/$b" "${bench_opts[@]}" \
      --json "$out/benchmark-x86-$name.json" >/dev/null || rc=1
    # Integer artifacts first: qemu emulates float arithmetic (FP16 above all: 110 CPU-s per call
    # of the 512 px model against 23 s in dynamic INT8) slowly, so a step cut short by its
    # timeout or a deadline leaves the cheap rows done rather than none.
    for token in $("$repo/.venv/bin/python" -c 'import json, sys
arts = json.load(open(sys.argv[1]))["artifacts"]
for a in sorted(arts, key=lambda a: a["precision"] in ("fp16", "fp32")):
    print(a["format"] + "/" + a["precision"])' "$repo/$b/manifest.json"); do
      echo "### $b $token on aarch64 ($(date -u +%H:%M:%S))"
      arm /opt/venv/bin/bcedge benchmark --model "/src/$b" --formats "$token" "${bench_opts[@]}" \
        --json "/out/suite/benchmark-$name-${token//\//-}.json" >/dev/null
      r=$?
      echo "### $b $token on aarch64: rc $r ($(date -u +%H:%M:%S))"
      [ $r -eq 0 ] || rc=$r
    done
  done
  return $rc
}
step benchmark benchmark_all
step tests arm /opt/venv/bin/python -m pytest "${pytest_args[@]}" "${runtime_tests[@]}"

"$repo/.venv/bin/python" "$here/report.py" --distro "$flavour" --base "$base" --bundles "${bundles[@]}" \
  --json "$repo/benchmarks/results/arm64_$flavour.json"
grep -q '=[^0]' "$status" && exit 1
exit 0
