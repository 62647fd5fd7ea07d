#!/usr/bin/env bash
# prepare on a copy of a Complete Journey bronze, old code (OLD clone) and new (NEW clone) in turn,
# twice each, wall seconds of jobs/prepare.py (JVM start-up included); then the silver tables compared.
# Usage: run.sh BRONZE_DIR OLD_CLONE NEW_CLONE WORKDIR
set -euo pipefail
bronze=$1 old=$2 new=$3 work=$4
for side in old new; do
  mkdir -p "$work/$side/completejourney" && rm -rf "$work/$side/completejourney"/*
  cp -r "$bronze" "$work/$side/completejourney/bronze"
done
for round in 1 2; do
  for side in old new; do
    clone=$old; [ "$side" = new ] && clone=$new
    start=$(date +%s.%N)
    (cd "$clone" && TF_USE_LEGACY_KERAS=1 PYTHONPATH="$clone" .venv/bin/python jobs/prepare.py \
      --conf-file conf/local.yaml --conf-file conf/datasets/completejourney.yaml \
      --set paths.lakehouse="$work/$side" > "$work/$side-$round.log" 2>&1)
    echo "round $round $side: $(echo "$(date +%s.%N) - $start" | bc) s ($(git -C "$clone" rev-parse --short HEAD))"
  done
done
cd "$new" && PYTHONPATH="$new" .venv/bin/python results/prepare-pseudonyms-20261204/compare.py "$work/old" "$work/new"
