#!/usr/bin/env bash
# Issue 25: two torchrun nodes on one machine, each with its own --out: train 20 steps, then --resume
# to 32; repeated; every log searched for a C++ traceback. Load: LOAD busy loops beside the runs.
set -u
N=${N:-10}; LOAD=${LOAD:-8}
hogs=(); for _ in $(seq 1 $LOAD); do (while :; do :; done) & hogs+=($!); done
trap 'kill ${hogs[@]} 2>/dev/null' EXIT
FLAGS="--algo diloco --steps 20 --batch-size 8 --seq-len 32 --eval-every 4 --checkpoint-every 4 --eval-batches 2 --sync-interval 4 --warmup-steps 4 --cache-dir /tmp/lowcomm-two-nodes-cache"
for i in $(seq 1 $N); do
  d=/tmp/lowcomm-two-nodes/$i; rm -rf $d; mkdir -p $d
  for phase in 1 2; do
    extra=""; [ $phase = 2 ] && extra="--resume --steps 32"
    port=$((30000 + RANDOM % 20000))
    pids=()
    for r in 0 1; do
      GLOO_SOCKET_IFNAME=lo OMP_NUM_THREADS=1 python -m torch.distributed.run --nnodes 2 --nproc-per-node 1 \
        --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:$port --rdzv-id tn$i$phase --local-addr 127.0.0.1 \
        --max-restarts 0 -m lowcomm train $FLAGS $extra --out $d/node$r > $d/log$r-$phase.txt 2>&1 &
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait $p || echo "run $i phase $phase: a node exited $?"; done
  done
  codes=$(grep -l "c10::Error\|terminate called\|Traceback" $d/log*.txt | tr '\n' ' ')
  echo "run $i: ${codes:-clean}"
done
