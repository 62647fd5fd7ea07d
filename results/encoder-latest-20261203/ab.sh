#!/bin/bash
# usage: ab.sh CLONE TAG RANKS : bench/train.py repeatnet on CJ
cd $1; export TF_USE_LEGACY_KERAS=1 PYTHONPATH=$1
timeout 900 .venv/bin/python bench/train.py --conf-file conf/local.yaml --conf-file conf/datasets/completejourney.yaml --set paths.lakehouse=/work/l19/lake --model repeatnet --steps 60 --warmup-steps 5 --ranks $3 --feed-passes 1 > /work/l19/ab-$2.log 2>&1
grep "^train .*examples/s over" /work/l19/ab-$2.log | cut -c1-110 | sed "s/^/$2 $(git -C $1 rev-parse --short HEAD): /"
