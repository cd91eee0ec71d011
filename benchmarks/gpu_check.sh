#!/bin/bash
# One script for a lent GPU machine (about 10 minutes): CUDA, bf16, DDP over NCCL, DeepSpeed ZeRO-2/3 and FSDP fits
# of the digits DDPM, then UNet training throughput (images/s) and MFU against the device's bf16 peak.
#   bash benchmarks/gpu_check.sh            (from the repository root, after `make install`)
#   SMOKE=1 bash benchmarks/gpu_check.sh    (the same checks on 2 CPU processes, 2 steps, tiny batches: tests the
#                                            script itself; tests/integration/test_gpu_check.py runs it)
# Prints one table; every check has a time limit, and a failed check is a row saying FAIL, not an abort.
set -u
PY=${PY:-.venv/bin/python}
OUT=${OUT:-/tmp/lit_gen_gpu_check}
if [ "${SMOKE:-0}" = 1 ]; then
  ACCEL=cpu DEV=cpu N=2 STEPS=2 PRECISION=32-true BACKEND=gloo SCALE=32 WARM=1 AMP=0 TPUT_LIMIT=900 MATMUL=512
  EXTRA=(--model.init_args.sampling_steps 5 --samples.num_samples 4)
else
  EXTRA=()
  GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
  ACCEL=gpu DEV=cuda N=$(( GPUS >= 2 ? 2 : 1 )) STEPS=50 PRECISION=bf16-mixed BACKEND=NCCL SCALE=1 WARM=3 AMP=1 TPUT_LIMIT=300 MATMUL=4096
fi
export DEV SCALE WARM AMP MATMUL
rm -rf "$OUT"; mkdir -p "$OUT"
ROWS=()
row() { ROWS+=("$(printf '%-34s %-6s %s' "$1" "$2" "$3")"); echo "${ROWS[-1]}" >&2; }  # also as it comes

check() {  # name, seconds, command...
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  if timeout "$limit" "$@" > "$OUT/${name// /_}.log" 2>&1; then row "$name" ok "$((SECONDS - start)) s"
  else row "$name" FAIL "see $OUT/${name// /_}.log"; fi
}

check "$DEV + bf16 matmul" 60 $PY -c "
import os, torch; dev = os.environ['DEV']; assert dev == 'cpu' or torch.cuda.is_available()
n = int(os.environ['MATMUL']); a = torch.randn(n, n, device=dev, dtype=torch.bfloat16); assert torch.isfinite(a @ a).all()
print(torch.cuda.get_device_name() if dev == 'cuda' else 'cpu')"

# the fits: the config's devices come after the presets' (which say 2)
FIT=(-m lit_gen fit --config experiments/ddpm/digits.yaml --trainer.max_steps "$STEPS" --trainer.accelerator "$ACCEL"
     --trainer.precision "$PRECISION" --samples.every_n_steps "$STEPS" --checkpoint.every_n_train_steps "$STEPS"
     --trainer.limit_val_batches 2 --runs_dir "$OUT/runs" ${EXTRA[@]+"${EXTRA[@]}"})
check "DDP ($BACKEND) $PRECISION, $N $DEV" 240 $PY "${FIT[@]}" --config experiments/trainer/ddp.yaml --trainer.devices "$N" --name ddp
for preset in deepspeed_zero2 deepspeed_zero3 fsdp; do
  check "$preset $PRECISION, $N $DEV" 240 $PY "${FIT[@]}" --config experiments/trainer/$preset.yaml --trainer.devices "$N" --name $preset
done
check "export ZeRO-3 folder, sample" 120 bash -c "$PY -m lit_gen export --ckpt_path $OUT/runs/deepspeed_zero3/checkpoints/last.ckpt --output $OUT/z3.ckpt && $PY -m lit_gen sample --ckpt_path $OUT/z3.ckpt --num_samples 16 --device $DEV --output $OUT/z3_samples"

# throughput and MFU of the UNet configs: forward + backward + Adam step, bf16 autocast, one GPU (SMOKE: fp32, as
# bf16 on a CPU without bf16 units is emulated and slow)
timeout "$TPUT_LIMIT" $PY - "$OUT" <<'EOF' > "$OUT/throughput.txt" 2> "$OUT/throughput.log"
import os, sys, time, torch
from lit_gen.nets import UNet
PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}  # dense bf16 FLOP/s
dev, scale, warm, amp = (os.environ["DEV"], int(os.environ["SCALE"]), int(os.environ["WARM"]),
                         os.environ["AMP"] == "1")  # SMOKE: CPU, batches / 32, fp32
name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
peak = next((v for k, v in PEAK.items() if k in name), None)
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
for label, shape, kwargs, batch in [
    ("digits UNet 16x16", (1, 16, 16), dict(base_channels=32, channel_mults=(1, 2), attention_resolutions=(8,)), 256),
    ("CIFAR-10 UNet 32x32 (35.7 M)", (3, 32, 32), dict(base_channels=128, channel_mults=(1, 2, 2, 2), attention_resolutions=(16,), dropout=0.1), 128),
    ("folder64 UNet 64x64 (113.7 M)", (3, 64, 64), dict(base_channels=128, channel_mults=(1, 1, 2, 2, 4, 4), attention_resolutions=(4,)), 32)]:
    batch = max(2, batch // scale)
    net = UNet(shape, 0, shape[0], **kwargs).to(dev)
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    x = torch.randn(batch, *shape, device=dev); t = torch.randint(0, 1000, (batch,), device=dev)
    def step():
        with torch.autocast(dev, torch.bfloat16, enabled=amp):
            loss = (net(x, t) - x).pow(2).mean()
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    for _ in range(warm): step()
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        with torch.autocast(dev, torch.bfloat16, enabled=amp):
            (net(x, t) - x).pow(2).mean().backward()
    opt.zero_grad(set_to_none=True)
    flops = fc.get_total_flops()
    sync(); t0 = time.perf_counter(); n = 20 // scale + 1
    for _ in range(n): step()
    sync(); dt = (time.perf_counter() - t0) / n
    mfu = f"{100 * flops / dt / peak:.1f}%" if peak else "n/a"
    rate = batch / dt
    print(f"{label:<34} {rate:>9.1f} img/s" if rate >= 1 else f"{label:<34} {rate:>9.2g} img/s",
          f"  MFU {mfu} ({name})", flush=True)
EOF
[ -s "$OUT/throughput.txt" ] && row "UNet throughput" ok "below" || row "UNet throughput" FAIL "see $OUT/throughput.log"

printf '%-34s %-6s %s\n' check result detail
printf '%s\n' "${ROWS[@]}"
cat "$OUT/throughput.txt" 2>/dev/null
[[ "${ROWS[*]}" != *FAIL* ]]  # the exit status: 0 when every check passed
