"""``lit-gen``: the dispatch of its commands (fit, validate, test through :class:`lit_gen.cli.LitGenCLI`;
sample, reflow, export, import, memory) and the one place user errors become one line on stderr."""

from __future__ import annotations

import os
import sys

from jsonargparse import ArgumentError
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lit_gen.checkpoints import CheckpointError
from lit_gen.cli import LitGenCLI, export_main
from lit_gen.console import check_command, check_config_files, one_line
from lit_gen.files import WriteError
from lit_gen.preemption import Preempted
from lit_gen.sharding import end_process_group

STATE_DICT_MISMATCH = "Error(s) in loading state_dict"  # torch's strict load_state_dict


def cli_main(args: list[str] | None = None) -> None:
    """Entry point of ``lit-gen`` and ``python -m lit_gen``; user errors end in one line on stderr, exit 2."""
    argv = list(sys.argv[1:] if args is None else args)
    try:
        check_command(argv)
        if argv and argv[0] == "sample":
            from lit_gen.sample import sample_main

            sample_main(argv[1:])
        elif argv and argv[0] == "reflow":
            from lit_gen.reflow import reflow_main

            reflow_main(argv[1:])
        elif argv and argv[0] == "export":
            export_main(argv[1:])
        elif argv and argv[0] == "import":
            from lit_gen.interop.pipelines import import_main

            import_main(argv[1:])
        elif argv and argv[0] == "memory":
            from lit_gen.memory import memory_main

            memory_main(argv[1:])
        else:
            check_config_files(argv)
            LitGenCLI(args=args)
    except Preempted as stop:  # the last completed step is saved; tell the scheduler the job did not finish
        if rank_zero_only.rank == 0:
            where = f"{stop.saved_to} holds that step" if stop.saved_to else "no step to save"
            print(f"lit-gen: stopped by {stop.signum.name} at global step {stop.step}; {where} (resume with "
                  "--ckpt_path last)", file=sys.stderr)
        sys.exit(128 + int(stop.signum))
    except WriteError as err:  # a checkpoint (or another file) could not be written: the fit stopped at once
        if os.environ.get("LIT_GEN_DEBUG"):
            raise
        print(f"lit-gen: error: {err}", file=sys.stderr)
        sys.exit(1)
    except (ArgumentError, CheckpointError, FileNotFoundError, ValueError, MisconfigurationException) as err:
        if os.environ.get("LIT_GEN_DEBUG"):
            raise
        message = one_line(str(err))
        if isinstance(err, MisconfigurationException) and "gpu" in message.lower():
            import torch

            if not torch.cuda.is_available():  # a GPU preset or option on a machine without one
                message += (" (this machine has no CUDA GPU: drop the GPU preset, or run on the CPU with "
                            "--trainer.accelerator cpu or --config experiments/trainer/cpu.yaml)")
        print(f"lit-gen: error: {message}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as err:  # torch's strict load_state_dict: weights of another architecture
        if os.environ.get("LIT_GEN_DEBUG") or not str(err).startswith(STATE_DICT_MISMATCH):
            raise
        detail = one_line(" ".join(line.strip() for line in str(err).splitlines()[:2]))
        detail = detail if len(detail) <= 300 else detail[:300] + " ..."
        print(f"lit-gen: error: the checkpoint's weights do not fit the model its config builds (written by "
              f"another lit_gen version or config?): {detail}", file=sys.stderr)
        sys.exit(2)
    finally:
        end_process_group()


if __name__ == "__main__":
    cli_main()
