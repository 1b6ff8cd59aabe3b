#!/usr/bin/env bash
# sim_bench.sh: the CPU time of sovmesh-sim's reference experiment.
#
#   bench/sim_bench.sh [BUILD_DIR] [RUNS]      (defaults: build-rel, 5)
#
# Runs BUILD_DIR/sim/sovmesh-sim with its defaults (the digits, 10
# clients, 20 rounds of 1 local epoch, fedavg) RUNS times and prints, per
# run, user and system CPU seconds (bash's `time`, from getrusage, to the
# millisecond) and the final accuracy; then one run of
#   --compare fedavg,fedmedian,trimmed,krum --byzantine 2:gaussian
# with its CPU time and summary.  Markdown on stdout.  The target is well
# under one second of CPU per reference run.  Use a release build
# (meson setup build-rel -Dbuildtype=release).  Not a test.
set -euo pipefail

build=${1:-build-rel}
runs=${2:-5}
sim="$build/sim/sovmesh-sim"
if [[ ! -x $sim ]]; then
	echo "sim_bench.sh: $sim not found; build it: ninja -C $build sim/sovmesh-sim" >&2
	exit 2
fi
if ! [[ $runs =~ ^[1-9][0-9]*$ ]]; then
	echo "sim_bench.sh: RUNS must be a positive number, not '$runs'" >&2
	exit 2
fi
buildtype=$(meson introspect --buildoptions "$build" 2>/dev/null |
	python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == "buildtype"))' \
	2>/dev/null || echo unknown)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
TIMEFORMAT='%3U %3S'

# run NAME ARGS...: sovmesh-sim -q ARGS; summary in $tmp/NAME.out, "user sys"
# in $tmp/NAME.time.  A failing run stops the bench with its stderr.
run() {
	local name=$1
	shift
	if ! { time "$sim" -q "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"; } 2>"$tmp/$name.time"; then
		echo "sim_bench.sh: sovmesh-sim $* failed:" >&2
		cat "$tmp/$name.err" >&2
		exit 1
	fi
}

echo "sim_bench: $sim (buildtype $buildtype), $(nproc) CPUs, $(date -u +%Y-%m-%d)"
echo
echo "Reference experiment (defaults: digits, 10 clients, 20 rounds, 1 epoch, fedavg), $runs runs:"
echo
echo "| run | user (s) | sys (s) | user + sys (s) | final accuracy |"
echo "|---|---|---|---|---|"
totals=()
for i in $(seq 1 "$runs"); do
	run "ref$i"
	read -r user sys <"$tmp/ref$i.time"
	total=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.3f", u + s }')
	acc=$(awk '$1 == "fedavg" { print $2 }' "$tmp/ref$i.out")
	totals+=("$total")
	echo "| $i | $user | $sys | $total | ${acc:-?} |"
done
printf '%s\n' "${totals[@]}" | sort -n | awk '
	{ v[NR] = $1; sum += $1 }
	END {
		med = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
		printf "\nuser + sys per run: min %.3f s, median %.3f s, max %.3f s, mean %.3f s\n",
		       v[1], med, v[NR], sum / NR
	}'

echo
echo "Comparison: --compare fedavg,fedmedian,trimmed,krum --byzantine 2:gaussian (one run):"
run cmp --compare fedavg,fedmedian,trimmed,krum --byzantine 2:gaussian
read -r user sys <"$tmp/cmp.time"
awk -v u="$user" -v s="$sys" 'BEGIN { printf "\nuser %.3f s + sys %.3f s = %.3f s CPU\n\n", u, s, u + s }'
sed 's/^/    /' "$tmp/cmp.out"
