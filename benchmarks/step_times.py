"""Seconds per training step of shipped configs on this machine, from short ``lit-gen fit`` runs: the wall
times TensorBoard records with each logged scalar, between the first logged step at or after ``--warmup`` and
the last (validation, sample grids and step checkpoints off, so only training steps count). Equal-budget
comparisons between methods fitted on different days (machines differ 2x from session to session) multiply
each method's steps by today's figure.

    python -m benchmarks.step_times --steps 200 --warmup 50 \
        --fit dvae=dalle/dvae_shapes.yaml \
        --fit transformer=dalle/transformer_shapes.yaml,--model.init_args.dvae_ckpt,@dvae \
        --fit ldm=t2i/ldm_shapes.yaml,--model.init_args.autoencoder_ckpt,runs_bench/t2i/autoencoder/...

Each ``--fit NAME=CONFIG[,ARG,...]`` adds command-line arguments; ``@NAME`` stands for the last checkpoint of
an earlier fit of this run (a stage that needs its predecessor's checkpoint can run on a short one).
``--runs`` keeps the runs; a folder that holds them already is refused by ``lit-gen fit``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from benchmarks.common import print_table

ROOT = Path(__file__).resolve().parents[1]


def seconds_per_step(run: Path, warmup: int) -> tuple[float, int]:
    """(seconds per step, steps timed) from the wall times of a run's logged scalars."""
    events = EventAccumulator(str(run)).Reload()
    first: dict[int, float] = {}
    for tag in events.Tags()["scalars"]:
        for event in events.Scalars(tag):
            first[event.step] = min(first.get(event.step, event.wall_time), event.wall_time)
    steps = sorted(s for s in first if s >= warmup)
    if len(steps) < 2:
        sys.exit(f"{run}: fewer than two logged steps at or after {warmup}: raise --steps")
    return (first[steps[-1]] - first[steps[0]]) / (steps[-1] - steps[0]), steps[-1] - steps[0]


def fit(runs: Path, name: str, spec: list[str], steps: int, checkpoints: dict[str, str]) -> Path:
    config, *extra = spec
    extra = [checkpoints[a[1:]] if a.startswith("@") else a for a in extra]
    command = [sys.executable, "-m", "lit_gen", "fit", "--config", f"experiments/{config}", "--runs_dir",
               str(runs), "--name", name, "--trainer.max_steps", str(steps),
               "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
               "--samples.every_n_steps", "0", "--checkpoint.every_n_train_steps", str(steps), *extra]
    log = runs / f"{name}.log"
    with open(log, "w") as out:
        if subprocess.run(command, cwd=ROOT, stdout=out, stderr=out).returncode:
            sys.exit(f"lit-gen fit {config} failed: see {log}")
    checkpoints[name] = str(runs / name / "checkpoints" / "last.ckpt")
    return runs / name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit", action="append", required=True, metavar="NAME=CONFIG[,ARG,...]")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50, help="steps left out of the timing")
    parser.add_argument("--runs", help="where the short runs go (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs, checkpoints, rows = Path(args.runs or tmp), {}, []
        runs.mkdir(parents=True, exist_ok=True)
        for item in args.fit:
            name, _, spec = item.partition("=")
            per_step, timed = seconds_per_step(fit(runs, name, spec.split(","), args.steps, checkpoints),
                                               args.warmup)
            rows.append([name, spec.split(",")[0], str(timed), f"{per_step:.4f}"])
            print(f"{name}: {per_step:.4f} s/step", file=sys.stderr, flush=True)
    print_table(["fit", "config", "steps timed", "s / step"], rows)


if __name__ == "__main__":
    main()
