"""evaluate(distributed=True) and `fastrobust eval --distributed` on 2 gloo ranks on the CPU
(torch.multiprocessing.spawn): the gathered report equals the single-process one exactly,
timings aside, with uneven shards; --distributed outside torchrun is a one-line error."""
import json
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastrobust.data import load_digits
from fastrobust.eval import evaluate, make_attack
from fastrobust.testing import free_port, join_gloo_group, run_cli, run_cli_captured, train_digits_cnn

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*runs its pure-PyTorch reference:RuntimeWarning"),
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                       reason="torch.distributed with gloo is not available"),
]

EPS = 0.1
WORLD = 2
SEEDS = []  # the seeds of the batches the counted attack ran in this process


def counted(model, seed=None, **kwargs):
    """pgd20, noting the seed of each batch it is built for (None: evaluate's probe)."""
    if seed is not None:
        SEEDS.append(seed)
    return make_attack("pgd20", model, seed=seed, **kwargs)


# 37 points in batches of 8: 5 clean batches, 2 on rank 0 and 3 on rank 1; keep_adversarial shares rows
CASCADE = dict(attacks=["pgd20", "apgd-ce", ("pgd-counted", counted)], eps=EPS, n=37, batch_size=8, seed=5,
               keep_adversarial=True)
# each attack on all clean-correct points, the hypocritical risk (few points: one rank may get no batch),
# the noise accuracy and a check (run on rank 0, broadcast)
EACH = dict(attacks=["pgd20", "hypocritical", "fgsm"], eps=EPS, n=24, batch_size=5, seed=1, cascade=False,
            noise=[0.3], checks=["zero_gradients"], check_n=8)
NOT_COMPARED = {"time_s", "clean_time_s", "total_time_s", "images_per_s", "metadata"}
CLI = ["eval", "--model", "fastrobust:small_cnn", "--data", "digits", "--eps", str(EPS), "--attacks", "pgd20,fgsm",
       "--points", "19", "--batch-size", "4", "--checks", "none", "--threads", "1", "--no-progress"]
CASES = [CASCADE, EACH]


def _numbers(report):
    """Everything in the report but its timings and metadata, per-point flags included."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in NOT_COMPARED}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return {"report": strip(report.to_dict(samples=True)), "x_adv": report.x_adv, "ranks": report.metadata["ranks"]}


def _rank(rank, port, model, data, folder):
    """One rank: both evaluate() cases, then the CLI; its numbers, counts and output to rank{rank}.pt."""
    join_gloo_group(rank, WORLD, port)
    try:
        numbers = [_numbers(evaluate(model, data, distributed=True, **case)) for case in CASES]
        code, out, err = run_cli_captured(CLI + ["--weights", folder / "weights.pt", "--out", folder / "cli-ranks",
                                                 "--distributed"])
        torch.save({"numbers": numbers, "seeds": list(SEEDS), "code": code, "stdout": out, "stderr": err},
                   folder / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def model():
    """SmallCNN of the registry's width (`--model fastrobust:small_cnn`), 4 epochs on digits."""
    x, y = load_digits("train")
    return train_digits_cnn(x, y, width=32, epochs=4)


@pytest.fixture(scope="module")
def runs(model, tmp_path_factory):
    """The two ranks' results and the single-process ones of the same evaluations."""
    folder = tmp_path_factory.mktemp("distributed")
    torch.save(model.state_dict(), folder / "weights.pt")
    data = load_digits("test")
    mp.spawn(_rank, args=(free_port(), model, data, folder), nprocs=WORLD, join=True)
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        SEEDS.clear()
        single = [_numbers(evaluate(model, data, **case)) for case in CASES]
        seeds = list(SEEDS)
    finally:
        torch.set_num_threads(threads)
    return {"folder": folder, "ranks": ranks, "single": single, "seeds": seeds}


@pytest.mark.parametrize("case", [0, 1], ids=["cascade-uneven-shards", "each-attack-noise-check"])
def test_every_rank_reports_the_single_process_numbers(runs, case):
    single = runs["single"][case]
    assert single["ranks"] == 1
    for r in runs["ranks"]:
        got = r["numbers"][case]
        assert got["ranks"] == WORLD
        assert got["report"] == single["report"]
        assert (got["x_adv"] is None) == (single["x_adv"] is None)
        if single["x_adv"] is not None:
            assert torch.equal(got["x_adv"], single["x_adv"])
    report = single["report"]
    if case == 0:  # a cascade that breaks some points and leaves others robust
        assert 0 < report["robust_accuracy"] < report["clean_accuracy"]
        assert report["attacks"][0]["successes"] > 0
        assert not torch.equal(single["x_adv"], load_digits("test")[0][:37])
    else:
        assert [c["name"] for c in report["checks"]] == ["zero_gradients"] and len(report["noise"]) == 1


def test_the_ranks_share_the_batches(runs):
    """Each batch (known by its seed) ran on one rank, both ranks had some."""
    r0, r1 = (r["seeds"] for r in runs["ranks"])
    assert r0 and r1 and sorted(r0 + r1) == sorted(runs["seeds"])


def test_cli_rank_zero_alone_prints_and_writes_the_single_process_report(runs, tmp_path, capsys):
    r0, r1 = runs["ranks"]
    assert r0["code"] == r1["code"] == 0, r0["stderr"] + r1["stderr"]
    assert "| pgd20 |" in r0["stdout"] and "report.json" in r0["stdout"]
    assert r1["stdout"] == "" and "evaluating" not in r1["stderr"] and "evaluating" in r0["stderr"]
    code, _, err = run_cli(CLI + ["--weights", runs["folder"] / "weights.pt", "--out", tmp_path / "single"], capsys)
    assert code == 0, err

    def numbers(path):
        report = json.loads(path.read_text())
        attacks = [{k: v for k, v in a.items() if k not in NOT_COMPARED} for a in report.pop("attacks")]
        return {k: v for k, v in report.items() if k not in NOT_COMPARED}, attacks
    assert numbers(runs["folder"] / "cli-ranks" / "report.json") == numbers(tmp_path / "single" / "report.json")


def test_distributed_outside_torchrun_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    code, out, err = run_cli(CLI + ["--out", tmp_path / "never", "--distributed"], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--distributed: not launched by torchrun" in err, err
    assert not (tmp_path / "never").exists()


def test_python_m_fastrobust_eval_in_torchruns_environment_is_distributed(monkeypatch, capsys):
    """python -m fastrobust.eval adds --distributed where torchrun set WORLD_SIZE."""
    from fastrobust.cli.ranks import module_main

    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(sys, "argv", ["fastrobust.eval"] + CLI[1:])
    assert module_main("eval") == 2
    assert "--distributed: not launched by torchrun (RANK, MASTER_ADDR, MASTER_PORT not set)" in \
        capsys.readouterr().err


def test_evaluate_distributed_without_a_process_group_is_an_error(model):
    with pytest.raises(RuntimeError, match="distributed=True: no torch.distributed process group"):
        evaluate(model, load_digits("test"), attacks=[], n=4, distributed=True)
