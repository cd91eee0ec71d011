"""Fit tiny versions of method configs under trainer presets, in the processes of one torchrun job:

    python -m torch.distributed.run --nproc_per_node 2 -m tests.integration.preset_sweep OUT PRESET:CONFIG...

For each (preset, config): a 4-step run (2 epochs of 2 batches, a checkpoint at the epoch boundary, step 2),
and a second run resumed from that checkpoint to step 4. Rank 0 writes ``OUT/results.json``: per
``PRESET:CONFIG``, the largest difference between the consolidated weights (EMA included) of the two runs'
last checkpoints (relative to each tensor's scale, at least 1), or the error. One job for the whole sweep
keeps the start-up (torch, Lightning, DeepSpeed, process group) out of the per-entry cost.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from lit_gen.sharding import end_process_group
from tests.conftest import EXPERIMENTS
from tests.integration.tiny import tiny_args


def fit(config: str, preset: str, runs: Path, name: str, max_steps: int, *extra: str) -> None:
    from lit_gen.cli import LitGenCLI

    args = tiny_args(config, runs, name=name, max_steps=max_steps)
    args += ["--config", str(EXPERIMENTS / "trainer" / f"{preset}.yaml"), "--trainer.accelerator=cpu",
             "--trainer.devices=2", "--data.init_args.batch_size=16", "--samples.every_n_steps=4", *extra]
    LitGenCLI(args=["fit", *args])


def difference(a: Path, b: Path) -> float:
    from lit_gen.checkpoints import consolidate

    sa, sb = consolidate(a)["state_dict"], consolidate(b)["state_dict"]
    if sa.keys() != sb.keys():
        raise RuntimeError(f"different keys: {sorted(set(sa) ^ set(sb))[:5]}")
    # relative to each tensor's scale (at least 1): a loss history of values ~1e4 is compared like a weight
    return max(float((sa[k].double() - sb[k].double()).abs().max() / sa[k].double().abs().max().clamp(min=1))
               for k in sa if sa[k].numel())


def main(out: str, entries: list[str]) -> None:
    out_dir = Path(out)
    results = {}
    for entry in entries:
        preset, config = entry.split(":")
        runs = out_dir / preset / config.replace("/", "_").removesuffix(".yaml")
        try:
            fit(config, preset, runs, "straight", 4, "--checkpoint.every_n_train_steps=2")
            start = f"--ckpt_path={runs}/straight/checkpoints/step0000002.ckpt"
            fit(config, preset, runs, "resumed", 4, start, "--checkpoint.every_n_train_steps=0",
                "--trainer.callbacks+=tests.integration.tiny.ExpectStartStep", "--trainer.callbacks.step=2")
            dist.barrier()
            result = {"difference": difference(runs / "straight/checkpoints/last.ckpt",
                                               runs / "resumed/checkpoints/last.ckpt")}
        except Exception as err:  # noqa: BLE001 - record it and go on with the next entry
            result = {"error": f"{type(err).__name__}: {err}"[:2000],
                      "traceback": traceback.format_exc()[-3000:]}
        results[entry] = result
        if dist.get_rank() == 0:
            (out_dir / "results.json").write_text(json.dumps(results, indent=1))
            print(entry, result.get("difference", result.get("error")), flush=True)
    dist.barrier()


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, entries = sys.argv[1], sys.argv[2:]
    sys.argv = sys.argv[:1]  # LitGenCLI gets its arguments from main()
    main(out, entries)
    end_process_group()
    # results are written: skip the interpreter's teardown, where a process that ran DeepSpeed and then
    # FSDP fits can abort on a still-joinable native thread (seen once under CI's load)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
