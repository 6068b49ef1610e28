"""DDP and FSDP2 under torchrun (gloo, 2 CPU processes) reproduce the single-process
run with the same global batch, and an FSDP2 checkpoint resumes in one process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hyperclone_core import Growth, family_for_config, plan  # noqa: E402
from hyperclone_core.io import save_checkpoint  # noqa: E402
from hyperclone_core.run.reference import execute  # noqa: E402
from hyperclone_core.model.testing import CASES, random_weights  # noqa: E402
from hyperclone_torch.model import Decoder  # noqa: E402
from hyperclone_core.train import TrainConfig  # noqa: E402
from hyperclone_core.train.checkpoint import newest_valid  # noqa: E402
from hyperclone_torch import train  # noqa: E402

STEPS, STOP = 22, 20
WORKER = textwrap.dedent('''
    import json, os, sys
    import numpy as np, torch, torch.distributed as dist
    from hyperclone_core import Plan
    from hyperclone_torch.model import Decoder
    from hyperclone_core.train import TrainConfig
    from hyperclone_torch import train
    src, out, data = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
    p = Plan.from_json(open(sys.argv[4]).read())
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    for mode, accum in (("ddp", 2), ("fsdp", 1)):
        cfg = TrainConfig(**json.loads(sys.argv[5]), parallel=mode, grad_accum=accum, out_dir=f"{out}/{mode}")
        res = train(Decoder.from_pretrained(src), cfg, data[:4000], data[4000:], plan=p,
                    callback=lambda rec: rec["step"] < %d - 1)
        if dist.get_rank() == 0:
            with open(f"{out}/{mode}.json", "w") as f:
                f.write(json.dumps(res.history))
    dist.barrier()  # every rank gets here before any tears the group down (as Parallel.close)
    dist.destroy_process_group()
    # done and written: leave without the interpreter's teardown, as the core worker
    # does for torch (why: TorchBackend.worker_exits_hard)
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)
''' % STOP)
CONFIG = dict(steps=STEPS, batch_size=8, seq_len=16, lr=3e-3, warmup_steps=3, eval_every=10, eval_batches=2,
              seed=4, device="cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One torchrun launch (DDP, then FSDP2) and the single-process reference."""
    tmp = tmp_path_factory.mktemp("dist")
    cfg = CASES["llama"]
    weights = random_weights(cfg, seed=1)
    family = family_for_config(cfg)
    p = plan(family, cfg, Growth.of(family.read(cfg), width=2), "noisy:10", 0)
    save_checkpoint(tmp / "clone", p.config, execute(p, weights))
    (tmp / "plan.json").write_text(p.to_json())
    data = np.resize(np.random.default_rng(0).integers(0, 96, 41), 5000).astype(np.int64)
    data[::7] = np.random.default_rng(1).integers(0, 96, len(data[::7]))
    np.save(tmp / "data.npy", data)
    (tmp / "worker.py").write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(tmp / "worker.py"), str(tmp / "clone"), str(tmp),
           str(tmp / "data.npy"), str(tmp / "plan.json"), json.dumps(CONFIG)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    single = train(Decoder.from_pretrained(tmp / "clone"), TrainConfig(**CONFIG), data[:4000], data[4000:], plan=p)
    return dict(tmp=tmp, plan=p, data=data, single=single,
                ddp=json.loads((tmp / "ddp.json").read_text()), fsdp=json.loads((tmp / "fsdp.json").read_text()))


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_loss_curve_equals_single_process(runs, mode):
    single = runs["single"].history
    dist_hist = runs[mode]
    assert [h["step"] for h in dist_hist] == [h["step"] for h in single[:len(dist_hist)]]
    assert len([h for h in dist_hist if h.get("train_loss") is not None]) == STOP
    worst = 0.0
    for a, b in zip(dist_hist, single):
        for key in ("train_loss", "val_loss", "symmetry"):
            if b.get(key) is None:
                assert a.get(key) is None
            else:
                assert abs(a[key] - b[key]) <= 1e-4, (mode, a["step"], key, a[key], b[key])
                worst = max(worst, abs(a[key] - b[key]))
    print(f"{mode}: max |difference| to the single-process run over {STOP} steps: {worst:.2e}")
    assert [h["symmetry"] for h in dist_hist if "symmetry" in h][-1] < 1.0


def test_fsdp_checkpoint_loads_and_resumes_in_one_process(runs, tmp_path):
    folder = newest_valid(runs["tmp"] / "fsdp")
    assert folder.name == f"checkpoint-{STOP:07d}"
    model = Decoder.from_pretrained(folder)  # full tensors, HF names: no sharding left in the files
    out = tmp_path / "fsdp"
    shutil.copytree(runs["tmp"] / "fsdp", out)
    res = train(model, TrainConfig(**CONFIG, out_dir=str(out), resume=True), runs["data"][:4000],
                runs["data"][4000:], plan=runs["plan"])
    ref = runs["single"].train_losses
    assert len(res.train_losses) == STEPS
    assert np.allclose(res.train_losses, ref, atol=1e-4, rtol=0)
