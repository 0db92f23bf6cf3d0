"""evaluate_detectors(distributed=True) and `fastrobust detect --distributed` on 2 gloo ranks on
the CPU (torch.multiprocessing.spawn): every rank's report equals the single-process one exactly,
the ranks share the jobs, a job failing on one rank raises on both, and --distributed outside
torchrun is a one-line error."""
import json
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastrobust.testing import free_port, join_gloo_group, run_cli, run_cli_captured

pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning", "ignore::FutureWarning"),
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                       reason="torch.distributed with gloo is not available"),
]

WORLD = 2
DETECTORS = {"fs": {}, "kd_bu": {"passes": 4}, "magnet": {"epochs": 2}, "nss": {}}
ATTACKS = ("fgsm", "pgd", "square")
CLI_OPTIONS = ["--detectors", "fs,lid", "--attacks", "fgsm,pgd", "--points", "30", "--max-fit", "120",
               "--adaptive-n", "6", "--adaptive-steps", "4", "--threads", "1"]


def _protocol_report(model, distributed, progress):
    """The survey protocol on the first 60 test digits, 150 fitting images, four detectors
    (unsupervised, per-attack supervised, trained, NSS's own PGD set), three attacks and the
    adaptive attack."""
    from fastrobust.data import load_digits
    from fastrobust.detect import DETECTORS as KINDS, adaptive_attack
    from fastrobust.detect.protocol import detection_split, evaluate_detectors
    from fastrobust.detect.survey_attacks import attacks_for

    (x_train, y_train), (x_test, y_test) = load_digits("train"), load_digits("test")
    data = detection_split(model, x_train, y_train, x_test[:60], y_test[:60], max_fit=150)
    detectors = {name: KINDS[name](**options) for name, options in DETECTORS.items()}

    def adaptive(m, det, x, y):
        return adaptive_attack(m, det, x, y, 0.125, kind="combined", steps=4, seed=0)[1]
    return evaluate_detectors(model, detectors, attacks_for(model, ATTACKS, 0.125), data, adaptive=adaptive,
                              adaptive_n=6, distributed=distributed, progress=progress)


def _failing_job(job):
    if job == 3:
        raise ValueError("job 3 cannot be done")
    return job


def _rank(rank, port, model, checkpoint, folder):
    """One rank: the protocol, a job list failing on rank 1, then the CLI; results to rank{rank}.pt."""
    from fastrobust.distributed import DistInfo, run_shared

    join_gloo_group(rank, WORLD, port, timeout_s=300)
    try:
        jobs = []
        report = _protocol_report(model, True, jobs.append)
        try:
            run_shared(range(5), _failing_job, DistInfo(rank, WORLD))
            failure = None
        except ValueError as exc:
            failure = str(exc)
        code, out, err = run_cli_captured(["detect", checkpoint, *CLI_OPTIONS, "--out", folder / "cli-ranks",
                                           "--distributed"])
        torch.save({"report": report, "jobs": jobs, "failure": failure, "code": code, "stdout": out, "stderr": err},
                   folder / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def checkpoint(survey_checkpoint):
    return survey_checkpoint


@pytest.fixture(scope="module")
def runs(survey_digits_model, checkpoint, tmp_path_factory):
    """The two ranks' results and the single-process protocol report."""
    folder = tmp_path_factory.mktemp("detect-distributed")
    mp.spawn(_rank, args=(free_port(), survey_digits_model, checkpoint, folder), nprocs=WORLD, join=True)
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        jobs = []
        single = _protocol_report(survey_digits_model, False, jobs.append)
    finally:
        torch.set_num_threads(threads)
    return {"folder": folder, "ranks": ranks, "single": single, "jobs": jobs}


def test_every_rank_reports_the_single_process_numbers(runs):
    single = runs["single"]
    assert list(single["detectors"]) == list(DETECTORS) and list(single["attacks"]) == list(ATTACKS)
    # a report with something in it: attacks that succeed, detectors that detect some of them
    assert all(0 < a["success"] for a in single["attacks"].values())
    assert any(row["detection_rate"] for entry in single["detectors"].values() for row in entry["attacks"].values())
    for r in runs["ranks"]:
        assert r["report"] == single


def test_the_ranks_share_the_jobs(runs):
    """Each attack and each detector ran on one rank, both ranks had some."""
    r0, r1 = (r["jobs"] for r in runs["ranks"])
    assert r0 and r1 and not set(r0) & set(r1)
    assert sorted(r0 + r1) == sorted(runs["jobs"])
    assert {f"detector {d}" for d in DETECTORS} <= set(runs["jobs"])


def test_a_job_failing_on_one_rank_raises_on_every_rank(runs):
    assert [r["failure"] for r in runs["ranks"]] == ["job 3 cannot be done"] * WORLD


def test_cli_rank_zero_alone_writes_the_single_process_report(runs, checkpoint, tmp_path, capsys):
    r0, r1 = runs["ranks"]
    assert r0["code"] == r1["code"] == 0, r0["stderr"] + r1["stderr"]
    assert "## DR / FPR (%)" in r0["stdout"] and r1["stdout"] == ""
    assert "[rank 0] " in r0["stderr"] and "[rank 1] " in r1["stderr"]
    code, _, err = run_cli(["detect", checkpoint, *CLI_OPTIONS, "--out", tmp_path / "single"], capsys)
    assert code == 0, err
    assert json.loads((runs["folder"] / "cli-ranks" / "report.json").read_text()) == \
        json.loads((tmp_path / "single" / "report.json").read_text())


def test_distributed_outside_torchrun_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(sys, "argv", ["fastrobust.detect", str(tmp_path / "last.pt"), "--out", str(tmp_path / "x")])
    from fastrobust.cli.ranks import module_main

    assert module_main("detect") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--distributed: not launched by torchrun" in err and "fastrobust.detect" in err
    assert not (tmp_path / "x").exists()
