"""DDP through torchrun: 2 CPU processes (gloo) train one short PGD-AT epoch on digits; each
rank attacks its own disjoint shard, and both end with bitwise identical weights."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fastrobust.testing import free_port
from fastrobust.train import load_checkpoint

SCRIPT = textwrap.dedent("""
    import gc, os, sys, weakref, torch
    from fastrobust.train import Trainer

    out = sys.argv[1]
    t = Trainer(data="digits", recipe="pgd", model_options={"width": 8}, epochs=1, batch_size=64,
                max_steps_per_epoch=4, steps=3, eval_samples=64, eval_steps=3, final_eval=True,
                plot=False, progress=False, out=out, device="cpu")
    initial = {k: v.clone() for k, v in t.model.state_dict().items()}
    result = t.fit()
    group = weakref.ref(torch.distributed.group.WORLD)
    t.close()
    gc.collect()
    torch.save({"initial": initial, "final": t.model.state_dict(), "indices": t.loader.indices(0).cpu(),
                "rank": t.dist.rank, "world_size": t.dist.world_size, "group_freed": group() is None,
                "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}},
               os.path.join(out, f"rank{t.dist.rank}.pt"))
""")



@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_cpu_ranks_end_with_identical_weights(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    # the fault handler prints every thread's Python stack should a rank abort
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", PYTHONFAULTHANDLER="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script), str(out)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    # close() really frees the process group (its gloo threads are joined then, not while the
    # interpreter exits, where they could abort the process)
    assert r0["group_freed"] and r1["group_freed"]
    # each rank trains on (and attacks) its own half of the epoch's permutation
    assert not set(r0["indices"].tolist()) & set(r1["indices"].tolist())
    # the same initial weights, training moved them, and both ranks end bitwise equal
    for k in r0["final"]:
        assert torch.equal(r0["initial"][k], r1["initial"][k]), k
        assert torch.equal(r0["final"][k], r1["final"][k]), k
    assert any(not torch.equal(r0["initial"][k], r0["final"][k]) for k in r0["final"])
    # metrics are all-reduced: both ranks report the same numbers; only rank 0 wrote files
    for key in ("train_loss", "train_adv_acc", "test_pgd_acc", "final_test_pgd_acc"):
        assert r0["metrics"][key] == r1["metrics"][key], key
    state = load_checkpoint(str(out / "last.pt"))
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["gen:recipe"], state["rng"][1]["gen:recipe"])
    for k, v in state["model"].items():
        assert torch.equal(v, r0["final"][k]), k
