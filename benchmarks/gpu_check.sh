#!/bin/bash
# One script for a lent GPU machine (about 10 minutes): CUDA, bf16, DDP over NCCL, DeepSpeed ZeRO-2/3 and FSDP fits
# of the digits DDPM, then UNet training throughput (images/s) and MFU against the device's bf16 peak.
#   bash benchmarks/gpu_check.sh            (from the repository root, after `make install`)
# Prints one table; every check has a time limit, and a failed check is a row saying FAIL, not an abort.
set -u
PY=${PY:-.venv/bin/python}
OUT=${OUT:-/tmp/lit_gen_gpu_check}
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
N=$(( GPUS >= 2 ? 2 : 1 ))
rm -rf "$OUT"; mkdir -p "$OUT"
ROWS=()
row() { ROWS+=("$(printf '%-34s %-6s %s' "$1" "$2" "$3")"); }

check() {  # name, seconds, command...
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  if timeout "$limit" "$@" > "$OUT/${name// /_}.log" 2>&1; then row "$name" ok "$((SECONDS - start)) s"
  else row "$name" FAIL "see $OUT/${name// /_}.log"; fi
}

check "CUDA + bf16 matmul" 60 $PY -c "
import torch; assert torch.cuda.is_available(); a = torch.randn(4096, 4096, device='cuda', dtype=torch.bfloat16)
assert torch.isfinite(a @ a).all(); print(torch.cuda.get_device_name())"

FIT=(-m lit_gen fit --config experiments/ddpm/digits.yaml --trainer.max_steps 50 --trainer.accelerator gpu
     --trainer.devices "$N" --trainer.precision bf16-mixed --samples.every_n_steps 50 --checkpoint.every_n_train_steps 50
     --runs_dir "$OUT/runs")
check "DDP (NCCL) bf16, $N GPU(s)" 240 $PY "${FIT[@]}" --config experiments/trainer/ddp.yaml --trainer.devices "$N" --name ddp
for preset in deepspeed_zero2 deepspeed_zero3 fsdp; do
  check "$preset bf16, $N GPU(s)" 240 $PY "${FIT[@]}" --config experiments/trainer/$preset.yaml --trainer.devices "$N" --name $preset
done
check "export ZeRO-3 folder, sample" 120 bash -c "$PY -m lit_gen export --ckpt_path $OUT/runs/deepspeed_zero3/checkpoints/last.ckpt --output $OUT/z3.ckpt && $PY -m lit_gen sample --ckpt_path $OUT/z3.ckpt --num_samples 16 --device cuda --output $OUT/z3_samples"

# throughput and MFU of the UNet configs: forward + backward + Adam step, bf16 autocast, one GPU
timeout 300 $PY - "$OUT" <<'EOF' > "$OUT/throughput.txt" 2> "$OUT/throughput.log"
import sys, time, torch
from lit_gen.nets import UNet
PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}  # dense bf16 FLOP/s
name = torch.cuda.get_device_name()
peak = next((v for k, v in PEAK.items() if k in name), None)
for label, shape, kwargs, batch in [
    ("digits UNet 16x16", (1, 16, 16), dict(base_channels=32, channel_mults=(1, 2), attention_resolutions=(8,)), 256),
    ("CIFAR-10 UNet 32x32 (35.7 M)", (3, 32, 32), dict(base_channels=128, channel_mults=(1, 2, 2, 2), attention_resolutions=(16,), dropout=0.1), 128),
    ("folder64 UNet 64x64 (113.7 M)", (3, 64, 64), dict(base_channels=128, channel_mults=(1, 1, 2, 2, 4, 4), attention_resolutions=(4,)), 32)]:
    net = UNet(shape, 0, shape[0], **kwargs).cuda()
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    x = torch.randn(batch, *shape, device="cuda"); t = torch.randint(0, 1000, (batch,), device="cuda")
    def step():
        with torch.autocast("cuda", torch.bfloat16):
            loss = (net(x, t) - x).pow(2).mean()
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    for _ in range(3): step()
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        with torch.autocast("cuda", torch.bfloat16):
            (net(x, t) - x).pow(2).mean().backward()
    opt.zero_grad(set_to_none=True)
    flops = fc.get_total_flops()
    torch.cuda.synchronize(); t0 = time.perf_counter(); n = 20
    for _ in range(n): step()
    torch.cuda.synchronize(); dt = (time.perf_counter() - t0) / n
    mfu = f"{100 * flops / dt / peak:.1f}%" if peak else "n/a"
    print(f"{label:<34} {batch / dt:>9.0f} img/s   MFU {mfu} ({name})")
EOF
[ -s "$OUT/throughput.txt" ] && row "UNet throughput" ok "below" || row "UNet throughput" FAIL "see $OUT/throughput.log"

printf '%-34s %-6s %s\n' check result detail
printf '%s\n' "${ROWS[@]}"
cat "$OUT/throughput.txt" 2>/dev/null
