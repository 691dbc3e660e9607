#!/usr/bin/env bash
# One consolidated run on a lent GPU (the device tool): throughput/MFU, the fused losses,
# FSDP on a GPU; with RUN_CD=1 also curriculum memory, the curriculum benchmark and the
# distillation benchmark (measured in earlier sessions). Results go to $OUT.
#   bash benchmarks/gpu_suite.sh            (OUT defaults to ./gpu-out; 5-8 minutes without RUN_CD,
#   the sum of the timeouts is more: with a 600 s limit per call, give it timeout_s=590)
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DUO_CACHE=/tmp/duo-cache TOKENIZERS_PARALLELISM=false
LOG="$OUT/log.txt"
W=/tmp/duo-bench
section() { echo "=== $1 ($(date +%T))" | tee -a "$LOG"; }
section "device"; nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 | tee -a "$LOG"
python -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" 2>&1 | tee -a "$LOG"

# MFU of small at L = 1024: the network compiled as trainer.compile=true does; the Duo
# loss either the library's fused backward (Triton kernels reading bf16 logits) or
# autograd fused by torch.compile (session 2's best); loss chunk 2^27 or none (2^31).
# (benchmarks/gpu_mfu.sh is the shorter MFU check, with the B = 64 default.) One process per batch size, one compile each; the last variant is
# profiled (kernel time by kind) into $OUT/profile_b*.md.
TT="python benchmarks/train_throughput.py --presets small --seq-len 1024 --steps 8 --warmup 3 --compile"
section "A: training throughput, small, L=1024"
{
  timeout 200 $TT --batch 16 --loss autograd-compiled fused-pytorch fused --loss-chunk-elements 134217728 2147483648 --profile "$OUT/profile_b16.md"
  timeout 120 $TT --batch 32 --loss fused --loss-chunk-elements 134217728 2147483648 --profile "$OUT/profile_b32.md"
} 2>&1 | grep -v Warning | tee -a "$LOG" | grep -E "^\| small|^\| preset|^\|---|device" > "$OUT/gpu_perf.md"

section "A2: Duo loss and distillation KL: autograd vs fused backward, eager and compiled, 16k tokens"
[ "${RUN_LOSS_COMPILE:-0}" = 1 ] && timeout 150 python benchmarks/loss_speed.py --device cuda --tokens 16384 --repeats 5 --compile 2>&1 | tee -a "$LOG" | grep -E "^\||N =|speed" >> "$OUT/gpu_perf.md"
timeout 60 python benchmarks/loss_speed.py --loss nelbo-backends --device cuda --tokens 16384 --repeats 5 2>&1 | tee -a "$LOG" | grep -E "^\||N =|speed" >> "$OUT/gpu_perf.md"
timeout 60 python benchmarks/loss_speed.py --loss kl-backends --device cuda --tokens 16384 --repeats 5 2>&1 | tee -a "$LOG" | grep -E "^\||N =|speed" >> "$OUT/gpu_perf.md"

section "E: DDP vs FSDP (trainer.strategy=fsdp) on one GPU: nccl, bf16, state per rank"
timeout 150 python benchmarks/fsdp_memory.py --preset small --devices 1 --accelerator gpu --seq-len 1024 --steps 3 2>&1 | tee -a "$LOG" | grep -E "^\||preset" >> "$OUT/gpu_perf.md"
[ "${RUN_CD:-0}" = 1 ] || { section "done (set RUN_CD=1 for B, C, D)"; exit 0; }

section "B: curriculum memory at K=50257"
timeout 60 python benchmarks/curriculum_memory.py --with-model --batch 16 --length 1024 --repeats 1 2>&1 | tee -a "$LOG" | grep -E "^\||K=" >> "$OUT/gpu_perf.md"

section "C: curriculum benchmark"
timeout ${C_TIMEOUT:-230} python benchmarks/curriculum.py --steps ${C_STEPS:-1200} --batch 32 --val-every 100 --val-batches 8 --out $W/curriculum >> "$LOG" 2>&1
cp $W/curriculum/curriculum.md $W/curriculum/curriculum.json $W/curriculum/curriculum.png "$OUT"/ 2>/dev/null

section "D: distillation benchmark"
TEACHER=$W/curriculum/topk-seed0
[ -f $TEACHER/checkpoints/last.ckpt ] && T="--teacher $TEACHER" || T=""
timeout ${D_TIMEOUT:-200} python benchmarks/distillation.py $T --teacher-steps ${C_STEPS:-1200} --rounds 5 --steps-per-round ${D_SPR:-150} --num-samples 32 --out $W/distillation >> "$LOG" 2>&1
cp $W/distillation/distillation.md $W/distillation/distillation.json $W/distillation/distillation.png "$OUT"/ 2>/dev/null
section "done"
