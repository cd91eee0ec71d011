"""Prints, for one shipped config per method, a digest of its module's parameter and buffer names in
registration order: the order in which DDP and Lightning copy them from rank 0 to the other ranks, by
position.

    PYTHONHASHSEED=1 python -m tests.integration.module_order

``test_ddp.py`` runs it under two hash seeds: the order must not depend on a set's or a dict's hash order.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile


def main() -> None:
    from lit_gen.cli import LitGenCLI
    from tests.integration.test_scaling import method_representatives
    from tests.integration.tiny import tiny_args

    with tempfile.TemporaryDirectory() as tmp:
        for config in method_representatives():
            sys.argv = sys.argv[:1]  # the CLI reads only args
            model = LitGenCLI(args=[*tiny_args(config, tmp), "--trainer.logger=false"], run=False).model
            model.configure_model()
            names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
            print(config, len(names), hashlib.sha1("\n".join(names).encode()).hexdigest()[:16], flush=True)


if __name__ == "__main__":
    main()
