"""Run under torchrun: train a config (JSON in argv[1]) without writing; each rank writes its weight
checksum to ``<argv[2]>/rank<k>.txt``."""

import json
import sys
from pathlib import Path

import torch

from mixhub.testing import model_fingerprint
from mixhub.trainer import Trainer

if __name__ == "__main__":
    trainer = Trainer(json.loads(sys.argv[1]), write=False)
    trainer.fit()
    flat = torch.cat([v.double().reshape(-1) for k, v in sorted(model_fingerprint(trainer).items()) if v.is_floating_point()])
    Path(sys.argv[2], f"rank{trainer.rank}.txt").write_text(f"{float(flat.sum()):.12e} {float(flat.abs().sum()):.12e}")
