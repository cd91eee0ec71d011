#!/bin/bash
# Every family on one GPU: a short bf16 fit of one small config per family, then `lit-gen sample` of its
# checkpoint on CUDA. Catches math that builds a tensor on the CPU beside CUDA ones (CI has no GPU).
#   bash benchmarks/gpu_families.sh        (from the repository root; after gpu_check.sh, as the fits run side by side)
# Prints one row per config; the exit status is 0 when every row says ok.
set -u
PY=${PY:-.venv/bin/python}
OUT=${OUT:-/tmp/lit_gen_gpu_families}
STEPS=${STEPS:-30}
JOBS=${JOBS:-4}
ALL=(ddpm/toy2d ddpm/digits ddim/digits iddpm/digits cfg/digits classifier/digits ncsn/digits sde/vp_digits
         sde/ve_toy2d sde/subvp_digits flows/glow_digits flows/realnvp_digits flows/nsf_toy2d flows/planar_toy2d
         dalle/dvae_shapes dalle/clip_shapes)
read -ra CONFIGS <<< "${CONFIGS:-${ALL[*]}}"  # CONFIGS="sde/ve_toy2d ddpm/digits": only those
rm -rf "$OUT"; mkdir -p "$OUT"
one() {  # config: fit, then sample its last checkpoint (validate it, for a model that does not generate)
  local config=$1 name=${1//\//_} start=$SECONDS after
  after=(sample --ckpt_path "$OUT/runs/$name/checkpoints/last.ckpt" --num_samples 16 --device cuda --output "$OUT/$name.samples")
  [[ $config == *classifier* || $config == *clip* || $config == *dvae* ]] && after=(validate --config "experiments/$config.yaml" \
    --ckpt_path "$OUT/runs/$name/checkpoints/last.ckpt" --trainer.accelerator gpu --trainer.devices 1 \
    --trainer.limit_val_batches 2 --runs_dir "$OUT/runs" --name "$name")
  if timeout 300 $PY -m lit_gen fit --config "experiments/$config.yaml" --trainer.max_steps "$STEPS" \
       --trainer.accelerator gpu --trainer.devices 1 --trainer.precision bf16-mixed --trainer.limit_val_batches 2 \
       --runs_dir "$OUT/runs" --name "$name" > "$OUT/$name.fit.log" 2>&1 \
     && timeout 300 $PY -m lit_gen "${after[@]}" > "$OUT/$name.after.log" 2>&1
  then printf '%-22s ok     %s s\n' "$config" $((SECONDS - start))
  else printf '%-22s FAIL   see %s\n' "$config" "$(ls -t "$OUT/$name".*.log | head -1)"; fi
}
export -f one; export PY OUT STEPS OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
printf '%s\n' "${CONFIGS[@]}" | xargs -P "$JOBS" -I{} bash -c 'one {}' | tee "$OUT/table.txt"
! grep -q FAIL "$OUT/table.txt"
