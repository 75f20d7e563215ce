#!/bin/bash
# Distillation probe on the quick preset with a 5,000-image validation split: teacher, then students at two learning rates.
set -e
cd "$(dirname "$0")/.."
H=${1:?usage: distill_probe.sh HOME [CACHE]}
mkdir -p $H/data; [ -n "$2" ] && ln -sfn "$2" $H/data/cache  # optional: a decoded-image cache to reuse
S=.venv/bin/simclr
D=../shared/datasets/cifar10-jpeg
$S pretrain --preset quick --data $D --home $H --validation 5000
$S finetune --preset quick --home $H
for lr in 1e-3 3e-4; do
  $S distill --home $H --distill-time 5m --distill-lr $lr
  R=$(ls -d $H/runs/*/ | tail -1)
  cp $R/distill.json $H/distill_lr$lr.json
done
echo DONE
