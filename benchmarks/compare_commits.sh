#!/usr/bin/env bash
# Pretraining tokens/s of two commits, side by side in alternating pairs (A B A B ...), on this machine.
#
#   bash benchmarks/compare_commits.sh OLD_COMMIT NEW_COMMIT [PAIRS] [-- extra overrides]
#
# Each commit is checked out into a temporary worktree and runs
#   python -m cramming arch=crammed-bert train=cpu data=sample train.microbatch_size=8 train.batch_size=8
#          train.batch_size_start=8 budget=25steps train.checkpoint_minutes=0
# from there (the worktree's own code). tokens/s = tokens / training seconds from the run's "budget spent"
# line (data preparation, model build and export are outside it). Alternating pairs spread slow drifts
# of a shared machine over both sides; run it on a quiet machine. Prints a Markdown table.
set -euo pipefail
old=${1:?old commit}; new=${2:?new commit}; pairs=${3:-3}
shift $(( $# < 3 ? $# : 3 )); [[ ${1:-} == -- ]] && shift
repo=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'git -C "$repo" worktree remove --force "$work/old" 2>/dev/null; git -C "$repo" worktree remove --force "$work/new" 2>/dev/null; rm -rf "$work"' EXIT
git -C "$repo" worktree add -q --detach "$work/old" "$old"
git -C "$repo" worktree add -q --detach "$work/new" "$new"
echo "| pair | $old tok/s | $new tok/s | new/old |"
echo "|---:|---:|---:|---:|"
for i in $(seq "$pairs"); do
  declare -A rate=()
  for side in old new; do
    log="$work/$side-$i.log"
    (cd "$work/$side" && env -u PYTHONPATH python -m cramming arch=crammed-bert train=cpu data=sample \
      train.microbatch_size=8 train.batch_size=8 train.batch_size_start=8 budget=25steps \
      train.checkpoint_minutes=0 name="$side-$i" base_dir="$work/out" "$@" >"$log" 2>&1) \
      || { echo "run $side-$i failed; the end of its log:" >&2; tail -20 "$log" >&2; exit 1; }
    rate[$side]=$(python - "$log" <<'PY'
import re, sys
line = next(l for l in open(sys.argv[1]) if "budget spent" in l)
tokens, seconds = re.search(r"([\d,]+) tokens, ([\d.]+) s", line).groups()
print(f"{int(tokens.replace(',', '')) / float(seconds):.1f}")
PY
)
  done
  ratio=$(python -c "print(f'{${rate[new]} / ${rate[old]}:.3f}')")
  echo "| $i | ${rate[old]} | ${rate[new]} | $ratio |"
done
