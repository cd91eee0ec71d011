"""Several fits in the processes of one torchrun job, so that a test pays the start-up (torch, Lightning,
DeepSpeed, the process group) once, not once per fit:

    python -m torch.distributed.run --nproc_per_node 2 -m tests.integration.fits_job PLAN.json

PLAN.json is a list of ``{"name": ..., "args": [...]}``: the arguments of each ``lit-gen fit``, run in order.
Checks that only need one fit are runs here; a resume check is a pair of runs (the second with
``--ckpt_path``) compared by the test, or one entry of ``preset_sweep``. Rank 0 writes ``PLAN.results.json``:
per run, ``{"ok": true}`` or the error and its traceback; a failed run does not stop the ones after it.
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


def run_fits(plan: list[dict]) -> dict[str, dict]:
    from lit_gen.cli import LitGenCLI

    results = {}
    for run in plan:
        try:
            LitGenCLI(args=["fit", *run["args"]])
            result = {"ok": True}
        except Exception as err:  # noqa: BLE001 - record it and go on with the next run
            result = {"error": f"{type(err).__name__}: {err}"[:2000],
                      "traceback": traceback.format_exc()[-3000:]}
        results[run["name"]] = result
        if dist.is_initialized():
            dist.barrier()
    return results


if __name__ == "__main__":
    torch.set_num_threads(1)
    path = Path(sys.argv[1])
    sys.argv = sys.argv[:1]  # LitGenCLI gets its arguments from the plan
    results = run_fits(json.loads(path.read_text()))
    if not dist.is_initialized() or dist.get_rank() == 0:
        path.with_suffix(".results.json").write_text(json.dumps(results, indent=1))
    end_process_group()
    # results are written: skip the interpreter's teardown, where a process that ran DeepSpeed and then
    # FSDP fits can abort on a still-joinable native thread (seen once under CI's load)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
