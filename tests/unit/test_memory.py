"""lit_gen.memory's model: the notes' states, and the optimizer step's temporaries against torch's own
allocations."""

from __future__ import annotations

import pytest
import torch

from lit_gen.memory import Settings, plans, settings_for


def peak_allocated(fn) -> int:
    """Peak of the CPU bytes allocated while ``fn`` runs, above what was allocated before: the profiler's
    allocation and free events, in time order."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        if e.tag == _EventType.Allocation:
            events.append((e.start_time_ns, e.extra_fields.alloc_size))  # > 0 allocated, < 0 freed
        stack.extend(e.children)
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("foreach", [False, True])
def test_adam_step_temporaries_match_the_model(foreach):
    """The model's torch Adam temporaries: 8 bytes per element updated at once one tensor at a time (sqrt(v),
    then sqrt(v) / c), 4 with foreach (divided in place). Its state is made before, by a first step."""
    numel = 1 << 20
    p = torch.nn.Parameter(torch.randn(numel))
    opt = torch.optim.Adam([p], lr=1e-3, foreach=foreach)
    p.grad = torch.randn(numel)
    opt.step()
    measured = peak_allocated(opt.step)
    model = plans(1, "32-true", False, numel, Settings(largest_tensor=numel, foreach=foreach))[0].step
    assert model == (4 if foreach else 8) * numel
    assert abs(measured - model) <= 0.02 * model, (measured, model)


def test_states_match_the_zero_papers_figure():
    """Rajbhandari et al. 2020, Fig. 1: a 7.5 B-parameter model in mixed precision with Adam (K = 12) over
    N_d = 64 devices holds 120 GB per device (data parallel), 31.4 GB (P_os), 16.6 GB (P_os+g) and 1.9 GB
    (P_os+g+p): the paper's own numbers, not lit_gen's formulas."""
    table = {p.name: p.states / 1e9 for p in plans(64, "16-mixed", False, 7_500_000_000, Settings())}
    paper = {"ddp": 120, "deepspeed_zero1": 31.4, "deepspeed_zero2": 16.6, "deepspeed_zero3": 1.9}
    for name, gb in paper.items():
        assert table[name] == pytest.approx(gb, abs=0.05), (name, table[name], gb)


def test_data_parallel_states_are_the_bytes_torch_holds():
    """The DDP row (fp32 weights, their gradients and Adam's two moments) against the bytes a real network
    and a real torch Adam hold after a step: measured, not restated."""
    from lit_gen.nets import UNet

    net = UNet((1, 16, 16), 0, None, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
               attention_resolutions=(8,))
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    net(torch.randn(2, 1, 16, 16), torch.tensor([1, 2])).square().mean().backward()
    opt.step()
    nbytes = lambda tensors: sum(t.numel() * t.element_size() for t in tensors)  # noqa: E731
    weights, grads = nbytes(net.parameters()), nbytes(p.grad for p in net.parameters())
    moments = nbytes(v for state in opt.state.values() for k, v in state.items() if k != "step")
    psi = sum(p.numel() for p in net.parameters())
    ddp = next(p for p in plans(2, "32-true", False, psi, settings_for(net, {"strategy": "ddp"}))
               if p.name == "ddp")
    assert (ddp.weights, ddp.grads, ddp.optimizer) == (weights, grads, moments)


def test_step_buffer_and_gathering_terms_of_the_model():
    """The terms beyond the states: the optimizer step's temporaries, communication buckets, ZeRO-3's
    persistent and gathered weights (measured against real runs in benchmarks/memory.py: 0.99-1.02x)."""
    psi, n = 1_000_000, 4
    s = Settings(largest_tensor=1000, foreach=True, reduce_bucket_size=10_000, overlap_comm=True)
    table = {p.name: p for p in plans(n, "bf16-mixed", True, psi, s)}
    # ZeRO-1: 2 + 2 + 12 / N; its step frees 2 (N - 1) / N of gradients, then adds the fp32 copy of the
    # bf16 partition (4 / N) and foreach Adam's denominator over it (4 / N)
    z1 = table["deepspeed_zero1"]
    assert z1.ema == 6 * psi  # EMA bf16 + fp32 (the other states: test_states_match_the_zero_papers_figure)
    assert z1.step == pytest.approx((4 / n + 4 / n - 2 * (n - 1) / n) * psi)
    assert z1.buffers == 2 * 10_000 * 2  # two bf16 buckets (overlap_comm)
    z3 = table["deepspeed_zero3"]
    assert z3.gathered == 2 * psi  # the default reuse distance 1e9 keeps the whole network gathered
    assert z3.peak(0) == pytest.approx(z3.states + z3.buffers + max(z3.gathered, z3.step))
    # a quarter of the parameters in tensors up to stage3_param_persistence_threshold: whole on every rank
    # once gathered, beside their partitions; the EMA's are never gathered in training
    kept = {p.name: p for p in plans(n, "bf16-mixed", True, psi, Settings(persistent=psi // 4))}
    assert kept["deepspeed_zero3"].weights == pytest.approx(2 * psi * (1 / 4 + 1 / n))
    assert kept["deepspeed_zero3"].ema == pytest.approx(6 * psi / n)
    assert kept["deepspeed_zero3"].grads == 2 * psi / n and kept["deepspeed_zero2"].weights == 2 * psi
    # the rest is gathered as needed
    assert kept["deepspeed_zero3"].gathered == pytest.approx(2 * psi * 3 / 4)
    off = kept["deepspeed_zero3_offload"]  # the persistent partitions stay on the device
    assert off.weights == pytest.approx(2 * psi / 4 * (1 + 1 / n))
    assert off.ema == pytest.approx(6 * psi / 4 / n)
    assert off.offloaded == pytest.approx(((2 + 6) * psi * 3 / 4 + (2 + 12) * psi) / n)
    lowered = {p.name: p for p in plans(n, "bf16-mixed", True, psi,
                                        Settings(largest_tensor=1000, max_reuse_distance=0,
                                                                                prefetch_bucket_size=1000))}
    assert lowered["deepspeed_zero3"].gathered == 2 * 2000
    # fp32 DeepSpeed: ZeRO-2 steps on the flat fp32 partition itself, no copy
    fp32 = {p.name: p for p in plans(n, "32-true", False, psi, s)}
    assert fp32["deepspeed_zero2"].step == 4 * psi / n
    assert fp32["ddp"].step == 4 * psi  # foreach: one copy of every tensor


def test_settings_come_from_the_preset_and_the_network():
    from lit_gen.nets import UNet

    net = UNet((1, 16, 16), 1000, None, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
               attention_resolutions=(8,))
    trainer = {"accelerator": "cpu", "strategy": {"class_path": "lit_gen.strategies.DeepSpeed", "init_args": {
        "stage": 3, "reduce_bucket_size": 1234, "max_reuse_distance": 5678, "overlap_comm": False}}}
    s = settings_for(net, trainer)
    assert (s.reduce_bucket_size, s.max_reuse_distance, s.overlap_comm, s.foreach) == (1234, 5678, False,
                                                                                       False)
    units = [sum(p.numel() for p in u.parameters()) for u in net.fsdp_units()]
    assert s.fsdp_unit == max(units) and s.fsdp_root == sum(p.numel() for p in net.parameters()) - sum(units)
    assert s.largest_tensor == max(p.numel() for p in net.parameters())
    # DeepSpeed's default
    assert 0 < s.persistent == sum(p.numel() for p in net.parameters() if p.numel() <= 1e5)
    trainer["strategy"]["init_args"]["param_persistence_threshold"] = 0
    assert settings_for(net, trainer).persistent == 0
    # GPUs: foreach, Lightning's and DeepSpeed's defaults
    assert settings_for(net, {"strategy": "ddp"}).foreach
    assert settings_for(net, {"strategy": "ddp"}).reduce_bucket_size == 2e8


def test_deepspeed_stage3_limits_reach_the_deepspeed_config():
    from lit_gen.strategies import DeepSpeed

    strategy = DeepSpeed(stage=3, max_reuse_distance=10, max_live_parameters=20, prefetch_bucket_size=30)
    zero = strategy.config["zero_optimization"]
    assert (zero["stage3_max_reuse_distance"], zero["stage3_max_live_parameters"],
            zero["stage3_prefetch_bucket_size"]) == (10, 20, 30)
    assert "stage3_param_persistence_threshold" not in zero  # None keeps DeepSpeed's default
    with pytest.raises(ValueError, match="max_reuse_distance=-1: must be"):
        DeepSpeed(stage=3, max_reuse_distance=-1)


def test_stacked_configs_merge_the_trainer_section_as_the_cli_does(tmp_path):
    from lit_gen.memory import trainer_settings

    files = []
    for i, text in enumerate([
        "trainer:\n  precision: bf16-mixed\n  strategy:\n    class_path: lit_gen.strategies.DeepSpeed\n"
        "    init_args:\n      stage: 3\n      reduce_bucket_size: 1234\n",
        "trainer:\n  strategy:\n    init_args:\n      max_reuse_distance: 99\n",  # one key of the preset's
    ]):
        files.append(tmp_path / f"{i}.yaml")
        files[-1].write_text(text)
    merged = trainer_settings([str(f) for f in files])
    assert merged == {"precision": "bf16-mixed",
                      "strategy": {"class_path": "lit_gen.strategies.DeepSpeed", "init_args": {
        "stage": 3, "reduce_bucket_size": 1234, "max_reuse_distance": 99}}}
    other = tmp_path / "fsdp.yaml"  # another class replaces the section, its init_args included
    other.write_text("trainer:\n  strategy:\n    class_path: lit_gen.strategies.FSDP\n")
    assert trainer_settings([str(files[0]),
                             str(other)])["strategy"] == {"class_path": "lit_gen.strategies.FSDP"}
