#!/usr/bin/env bash
# The MFU check of issue 4 on a lent GPU, short enough for one device call (~5 min):
# train_throughput for small at L = 1024 with the library's fused loss, at the batch
# of the MFU table (16) and the papers' per-GPU batch (64, chunked in 2 and unchunked),
# each profiled; then a real `duo train` of small on the GPU (bf16-mixed, compiled,
# gradient clipping, fused AdamW, end-of-training validation and samples).
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DUO_CACHE=/tmp/duo-cache TOKENIZERS_PARALLELISM=false
TT="python benchmarks/train_throughput.py --presets small --seq-len 1024 --steps 8 --warmup 3 --compile --loss fused"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/mfu.md"
date +%T
timeout 120 $TT --batch 16 --loss-chunk-elements 134217728 2147483648 --profile "$OUT/profile_b16.md" 2>&1 | grep -E "^\| small|^\| preset|device|Error" | tee -a "$OUT/mfu.md"
date +%T
timeout 150 $TT --batch ${BIG_BATCH:-64} --loss-chunk-elements 2147483648 4294967296 --profile "$OUT/profile_b64.md" 2>&1 | grep -E "^\| small|Error" | tee -a "$OUT/mfu.md"
date +%T
# Other torch.compile modes, opt-in (long compiles): e.g.
#   COMPILE_MODES="max-autotune-no-cudagraphs reduce-overhead" bash benchmarks/gpu_mfu.sh
# (max-autotune: GEMM templates with fused epilogues; reduce-overhead: CUDA graphs)
for mode in ${COMPILE_MODES:-}; do
  timeout 400 $TT --batch 16 --loss-chunk-elements 2147483648 --compile-mode "$mode" 2>&1 | grep -E "^\| small|Error" | tee -a "$OUT/mfu.md"
  date +%T
done
timeout 150 python -c "import sys; from duo.cli import main; sys.exit(main())" train model=small data.seq_len=1024 \
  trainer.batch_size=16 trainer.max_steps=40 trainer.compile=true trainer.val_every=40 trainer.val_batches=2 \
  trainer.log_every=10 trainer.progress_bar=false sample.num_samples=2 run_dir=/tmp/gpu-train > "$OUT/train.txt" 2>&1
echo "duo train rc=$?" | tee -a "$OUT/mfu.md"; tail -4 "$OUT/train.txt"
cp /tmp/gpu-train/metrics.jsonl "$OUT/" 2>/dev/null; grep -h '"train"' "$OUT/metrics.jsonl" | tail -2
date +%T
# FSDP on one GPU (nccl, bf16): state per rank vs DDP; opt-in (about 1 minute)
[ "${FSDP:-0}" = 1 ] && timeout 150 python benchmarks/fsdp_memory.py --preset small --devices 1 --accelerator gpu --seq-len 1024 --steps 3 2>&1 | grep -E "^\||preset|Error" | tee -a "$OUT/mfu.md"
date +%T
