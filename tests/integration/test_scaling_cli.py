"""The scaling commands on one process: lit-gen memory, and the one-line errors of sharded runs."""

from __future__ import annotations

import re

from tests.conftest import EXPERIMENTS
from tests.integration.tiny import tiny_args


def memory_rows(out: str) -> dict[str, list[float]]:
    return {line.split()[0]: [float(v) for v in line.split()[1:]] for line in out.splitlines()
            if line.startswith(("ddp ", "deepspeed_", "fsdp"))}


def test_memory_reports_the_notes_model_for_the_config_network(tmp_path, lit_gen):
    # ZeRO-3 partitions every tensor here (the digits UNet's are all under DeepSpeed's default persistence
    # threshold of 1e5 elements, which keeps such tensors whole on every rank once gathered: checked at the
    # end)
    whole = tmp_path / "partition_all.yaml"
    whole.write_text("trainer:\n  strategy:\n    class_path: lit_gen.strategies.DeepSpeed\n    init_args:\n"
                     "      param_persistence_threshold: 0\n")
    proc = lit_gen("memory", "--config", str(EXPERIMENTS / "ddpm/digits.yaml"), "--config",
                   str(EXPERIMENTS / "trainer/bf16.yaml"), "--config", str(whole), "--devices", "4",
                   "--memory_per_device", "0.001")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    psi = float(re.search(r"network: ([\d.]+) M parameters", out).group(1)) * 1e6
    act = float(re.search(r"activations at micro-batch (\d+) .*: ([\d.]+) GiB", out).group(2))
    assert re.search(r"activations at micro-batch 32 ", out)  # the config's global batch 128 over 4 ranks
    assert act > 0
    rows = memory_rows(out)
    gib = psi / 2**30
    # bf16: torch Adam 4 + 4 + 8 per parameter (+ 4 EMA), DeepSpeed 2 + 2 + 12 (+ 2 + 4 EMA: bf16, fp32
    # average); N = 4
    expected = {"ddp": (4, 4, 8, 4), "deepspeed_zero1": (2, 2, 3, 6), "deepspeed_zero2": (2, 0.5, 3, 6),
                "deepspeed_zero3": (0.5, 0.5, 3, 1.5), "fsdp": (1, 1, 2, 1)}
    for name, per_param in expected.items():
        for got, b in zip(rows[name][:4], per_param, strict=True):
            assert abs(got - b * gib) <= 0.0015, (name, rows[name], per_param)
    for name, (*_, states, buffers, gathered, step, peak, _cpu) in rows.items():
        assert abs(peak - states - buffers - max(gathered + act, step)) <= 0.003, (name, rows[name])
    # Lightning's DeepSpeed buckets: 2 x 2e8 bf16 elements under ZeRO-1/2 (overlap_comm), 1 x under ZeRO-3
    assert abs(rows["deepspeed_zero2"][5] - 2 * 2e8 * 2 / 2**30) <= 0.002
    assert abs(rows["deepspeed_zero3"][5] - 2e8 * 2 / 2**30) <= 0.002
    assert rows["fsdp_grad_op"][6] > rows["fsdp"][6] > 0  # the UNet's blocks are gathered one at a time
    # the DDP > ZeRO-1 > ZeRO-2 > ZeRO-3 order of the notes
    states = [rows[n][4] for n in ("ddp", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3")]
    assert states == sorted(states, reverse=True) and len(set(states)) == 4
    assert "nothing fits in 0.001 GiB" in out
    proc = lit_gen("memory", "--config", str(EXPERIMENTS / "ddpm/digits.yaml"), "--devices", "2",
                   "--memory_per_device", "80")
    assert "recommended for 80 GiB per device: ddp" in proc.stdout
    # DeepSpeed's default threshold: ZeRO-3 keeps this network's weights whole beside their partitions
    rows = memory_rows(lit_gen("memory", "--config", str(EXPERIMENTS / "ddpm/digits.yaml"), "--config",
                               str(EXPERIMENTS / "trainer/bf16.yaml"), "--devices", "4").stdout)
    assert abs(rows["deepspeed_zero3"][0] - 2 * 1.25 * gib) <= 0.0015 and rows["deepspeed_zero3"][0] > 2 * gib


def test_memory_measures_on_a_batch_of_the_data_or_says_why_not(tmp_path, lit_gen):
    # captions, tokenizer fitted
    proc = lit_gen("memory", "--config", str(EXPERIMENTS / "dalle/clip_shapes.yaml"))
    assert proc.returncode == 0 and "no batch of the data" not in proc.stderr, proc.stderr[-2000:]
    assert float(re.search(r"activations at micro-batch 128 .*: ([\d.]+) GiB", proc.stdout).group(1)) > 0
    override = tmp_path / "data.yaml"
    override.write_text(f"data:\n  init_args:\n    root: {tmp_path / 'nowhere'}\n    batch_size: 2\n")
    proc = lit_gen("memory", "--config", str(EXPERIMENTS / "ddpm/cifar10.yaml"), "--config", str(override))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "lit-gen memory: no batch of the data (CIFAR10 not found" in proc.stderr  # nothing downloaded
    assert "activations measured on random images" in proc.stderr
    assert "activations at micro-batch 2 " in proc.stdout
    assert not (tmp_path / "nowhere").exists() or not any((tmp_path / "nowhere").iterdir())
    # captions cannot be made up: without its data a text method ends in one line
    proc = lit_gen("memory", "--config", str(EXPERIMENTS / "dalle/clip_cifar10.yaml"), "--config",
                   str(override))
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("lit-gen: error: CLIP trains on "
                                                    "'caption'"), proc.stderr[-2000:]


def test_gradient_accumulation_inside_a_deepspeed_config_is_one_line(tmp_path, lit_gen):
    config = ('{"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 4, '
              '"train_micro_batch_size_per_gpu": 8}')
    proc = lit_gen("fit", *tiny_args("ddpm/toy2d.yaml", tmp_path), "--config",
                   str(EXPERIMENTS / "trainer/deepspeed_zero2.yaml"), "--trainer.devices=1",
                   "--trainer.accelerator=cpu", f"--trainer.strategy.init_args.config={config}")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lit-gen: error:") and "gradient_accumulation_steps" in last


def test_checkpoint_folders_are_recognised_and_inner_folders_refused(tmp_path):
    import pytest
    import torch

    from lit_gen.checkpoints import CheckpointError, checkpoint_layout

    ds = tmp_path / "last.ckpt"
    (ds / "checkpoint").mkdir(parents=True)
    (ds / "latest").write_text("checkpoint")
    torch.save({}, ds / "checkpoint" / "mp_rank_00_model_states.pt")
    fsdp = tmp_path / "fsdp.ckpt"
    fsdp.mkdir()
    torch.save({}, fsdp / "meta.pt")
    (fsdp / "__0_0.distcp").write_bytes(b"")
    assert checkpoint_layout(ds) == "deepspeed" and checkpoint_layout(fsdp) == "fsdp"
    with pytest.raises(CheckpointError, match="is the inner folder of the DeepSpeed checkpoint .* pass "
                                              "--ckpt_path"):
        checkpoint_layout(ds / "checkpoint")
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint"):
        checkpoint_layout(tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        checkpoint_layout(tmp_path / "nothing")
