#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine (README.md's two commands):
#   tools/quickstart.sh run    install packages, build, run sovmeshd on its
#                              embedded default configuration
#   tools/quickstart.sh test   install packages, build with warnings as
#                              errors, run every test, then again under
#                              ASan+UBSan (clang, with the fuzz targets);
#                              ends with "N passed, N failed"
# Environment: SOVMESH_SKIP_APT=1 skips apt-get (packages already there);
# BUILD_DIR (default build) and ASAN_BUILD_DIR (default build-asan).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  gcc clang libclang-rt-14-dev make binutils pkg-config meson ninja-build python3
  libuv1-dev libgnutls28-dev nettle-dev libconfig-dev libjansson-dev
  libcurl4-gnutls-dev libcmocka-dev node-llhttp
  libqrencode-dev libzbar-dev libpng-dev libjpeg-dev gnutls-bin curl
  libavahi-client-dev avahi-daemon avahi-utils dbus iproute2 util-linux
  libsqlite3-dev
  chromium fonts-noto-color-emoji
)
# Node.js for the ollama JS client test: Debian's nodejs and npm, unless a
# node with npm is already there (e.g. NodeSource's nodejs, which bundles
# npm and conflicts with Debian's npm package).
NODE_PACKAGES=(nodejs npm)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_packages() {
  [ "${SOVMESH_SKIP_APT:-0}" = 1 ] && return 0
  local missing=() wanted=("${PACKAGES[@]}")
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    wanted+=("${NODE_PACKAGES[@]}")
  fi
  for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "== installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build() { # build DIR [meson setup args...]
  local dir=$1; shift
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" --werror "$@" >/dev/null
  fi
  meson compile -C "$dir" >/dev/null
}

# Count results of one `meson test` run from its JSON log.
count_results() { # DIR -> prints "passed failed"
  python3 - "$1/meson-logs/testlog.json" <<'PY'
import json, sys
passed = failed = 0
for line in open(sys.argv[1]):
    r = json.loads(line).get("result")
    if r in ("OK", "EXPECTEDFAIL", "SKIP"):
        passed += r != "SKIP"
    else:
        failed += 1
print(passed, failed)
PY
}

cmd_run() {
  install_packages
  build "${BUILD_DIR:-build}"
  echo "== starting sovmeshd on its embedded default configuration (Ctrl-C stops it)"
  exec "./${BUILD_DIR:-build}/core/sovmeshd"
}

cmd_test() {
  install_packages
  local main=${BUILD_DIR:-build} asan=${ASAN_BUILD_DIR:-build-asan}
  local total_pass=0 total_fail=0 p f

  # The ollama npm client for test_ollama_client and playwright-core for
  # test_network_page (versions pinned in tests/js/package-lock.json; the
  # browser is Debian's chromium above); if this fails, those tests say why.
  if [ ! -d tests/js/node_modules ]; then
    echo "== npm ci (tests/js)"
    (cd tests/js && npm ci --no-audit --no-fund --silent) ||
      echo "warning: npm ci in tests/js failed; test_ollama_client and test_network_page retry it" >&2
  fi

  echo "== build ($main, gcc, warnings as errors)"
  build "$main"
  echo "== tests ($main)"
  meson test -C "$main" --print-errorlogs --num-processes 2 || true
  read -r p f < <(count_results "$main")
  total_pass=$((total_pass + p)); total_fail=$((total_fail + f))

  echo "== build ($asan, clang, ASan+UBSan, fuzz targets)"
  CC=clang build "$asan" -Db_sanitize=address,undefined -Db_lundef=false -Dfuzzing=true
  echo "== tests ($asan)"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    meson test -C "$asan" --print-errorlogs --num-processes 2 || true
  read -r p f < <(count_results "$asan")
  total_pass=$((total_pass + p)); total_fail=$((total_fail + f))

  echo "$total_pass passed, $total_fail failed"
  [ "$total_fail" -eq 0 ]
}

case "${1:-}" in
  run) cmd_run ;;
  test) cmd_test ;;
  *) echo "usage: $0 run|test" >&2; exit 2 ;;
esac
