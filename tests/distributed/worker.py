"""Run under torchrun by tests/test_distributed.py: train a TrainConfig given as JSON, save this rank's state.

Usage: torchrun --nproc-per-node N tests/distributed/worker.py CONFIG_JSON RUN_DIR OUT_DIR [STEPS]
Each rank writes OUT_DIR/rank{R}.pt with its model and weight-average state, so a test can check that the
ranks agree and that they match a single-process run.
"""

import json
import os
import sys

import torch

from advkit import TrainConfig, Trainer

torch.set_num_threads(1)
settings, run_dir, out_dir = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
steps = int(sys.argv[4]) if len(sys.argv) > 4 else None
trainer = Trainer(TrainConfig(**settings), run_dir, progress=False)
trainer.fit(stop_after_steps=steps)
state = {
    "model": trainer.model.state_dict(),
    "attack_on_bare_module": trainer.attack.model is trainer.model,
    "loss_through_ddp": isinstance(trainer.trained_model, torch.nn.parallel.DistributedDataParallel),
    "averages": {str(decay): average.model.state_dict() for decay, average in trainer.averages.items()},
    "rectifier": trainer.rectifier.state_dict(),
    "objective": trainer.objective.state_dict(),
}
torch.save(state, os.path.join(out_dir, f"rank{trainer.world.rank}.pt"))
trainer.group.close()
