"""What a user sees (issue 24, items 10 and 11): no Lightning message about what lit_gen handles, a progress
bar in steps against max_steps, every command in the usage line and its errors, readable one-line errors for
bad configs, scatter plots that say what they do not show, and class grids that say which row is which
class."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from lit_gen.console import COMMANDS, SILENCED, one_line
from lit_gen.main import cli_main
from lit_gen.visual import scatter_figure
from tests.conftest import ROOT, subprocess_env
from tests.integration.tiny import tiny_args

DIGITS = "ddpm/digits.yaml"


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = subprocess_env() | {"OMP_NUM_THREADS": "1"}  # the warnings a user sees by default
    return subprocess.run([sys.executable, "-m", "lit_gen", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_fit_and_its_mid_epoch_resume_print_no_handled_warning_and_count_steps(tmp_path):
    # 11-batch epochs under log_every_n_steps 25 (the main job's shape); then a resume inside an epoch
    args = [*tiny_args(DIGITS, tmp_path, max_steps=3), "--trainer.limit_train_batches=11",
            "--trainer.log_every_n_steps=25", "--trainer.enable_progress_bar=true",
            "--samples.every_n_steps=0"]
    first = _run(["fit", *args])
    assert first.returncode == 0, first.stderr[-3000:]
    second = _run(["fit", *args, "--trainer.max_steps=5", "--ckpt_path=last"])
    assert second.returncode == 0, second.stderr[-3000:]
    for run in (first, second):
        output = run.stdout + run.stderr
        assert "litlogger" not in output
        for pattern, _ in SILENCED:
            assert not __import__("re").search(pattern, output), pattern
        assert "Warning" not in output, output[-3000:]
    # the bar counts optimizer steps against max_steps (from the resumed step), not batches of an epoch
    assert "steps" in first.stdout and "3/3" in first.stdout, first.stdout[-2000:]
    assert "5/5" in second.stdout and "/11" not in second.stdout, second.stdout[-2000:]


def test_usage_and_an_unknown_command_list_every_command(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    usage = capsys.readouterr().out.splitlines()[0]
    assert all(command in usage for command in COMMANDS), usage
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fitt", "--config", "x.yaml"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lit-gen: error: unknown command 'fitt'") and all(c in err for c in COMMANDS), err


@pytest.mark.parametrize("content, expected", [
    ("trainer:\n  max_steps: [1, 2\n", "is not valid YAML at line 3, column 1"),
    ("", "is empty: a config is a YAML mapping"),
    ("- a\n- b\n", "holds a list, not a mapping"),
])
def test_a_bad_config_file_is_named_in_one_line(content, expected, tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(config) in err[0] and expected in err[0], err


def test_a_bad_nested_value_reads_as_its_key_and_value(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", *tiny_args(DIGITS, tmp_path), "--model.init_args.net.init_args.base_channels=abc"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert 'key "net.base_channels"' in err and "abc" in err, err
    assert "typing.Callable" not in err and "Namespace(" not in err, err
    message = ('Problem with given class_path \'lit_gen.methods.DDPM\': Parser key "net": Type '
               'typing.Callable[[tuple[int, ...], int, int], torch.nn.modules.module.Module] expects a '
               'function or a callable class: Parser key "base_channels": Expected a <class \'int\'>. Got '
               'value: abc. Got value: Namespace(class_path=\'x\')')
    assert one_line(message) == ("Problem with given class_path 'lit_gen.methods.DDPM': key "
                                 "\"net.base_channels\": Expected a <class 'int'>. Got value: abc.")


def test_a_scatter_plot_says_how_many_points_it_does_not_show():
    points = torch.zeros(200, 2)
    points[:7, 0] = 40.0
    points[7, 1] = float("nan")
    title = scatter_figure(points, title="step 5").axes[0].get_title()
    assert "8 of 200 outside [-5, 5]^2" in title, title
    assert "outside" not in scatter_figure(torch.zeros(10, 2)).axes[0].get_title()


def test_a_class_conditional_grid_names_each_row(tmp_path):
    from PIL import Image

    cli_main(["fit", *tiny_args("cfg/digits.yaml", tmp_path), "--samples.num_samples=20"])
    grid = np.asarray(Image.open(sorted((tmp_path / "tiny" / "samples").glob("step_*.png"))[-1]))
    # ten rows of two 8-pixel digits (10 x 9 + 1 = 91 pixels), doubled to fit the label written left of each
    # row
    assert grid.shape[0] == 2 * 91, grid.shape
    margin = grid.shape[1] - 2 * (2 * 9 + 1)
    assert margin > 4
    for row in range(10):  # dark text on white in every row's margin
        band = grid[2 * 9 * row + 1 : 2 * 9 * (row + 1), :margin]
        assert (band < 100).any() and (band > 200).any(), row
