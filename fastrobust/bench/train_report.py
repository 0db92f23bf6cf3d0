"""Output of the training suite (fastrobust/bench/train.py): the per-epoch summary and the
targets, the CSV rows, the JSON/CSV/PNG files (through pgd_report) and the text table."""
from __future__ import annotations

from typing import Dict, List

from . import harness, pgd_report, results
from .pgd_report import _fmt, failures, note, status
from .train_plan import EPOCH_IMAGES, FGSM_EPOCHS, MAIN, TARGETS

# ----------------------------------------------------------------------------- summary and targets


def summarize(result: dict) -> dict:
    """seconds per epoch by model, recipe and implementation; the 15-epoch FGSM-RS projection;
    the targets with their values."""
    per_epoch: Dict[str, Dict[str, Dict[str, float]]] = {}
    fgsm: Dict[str, Dict[str, float]] = {}
    for c in result["cases"]:
        key = f"{c['model']} B{c['batch']} {c['dtype']}"
        spe = {n: e["seconds_per_epoch"] for n, e in c["implementations"].items() if e.get("seconds_per_epoch")}
        if spe:
            per_epoch.setdefault(key, {})[c["kind"]] = spe
        if c["kind"] == "fgsm-rs" and spe:
            fgsm[key] = {n: FGSM_EPOCHS * s for n, s in spe.items()}
    return {"seconds_per_epoch": per_epoch, f"fgsm_rs_{FGSM_EPOCHS}_epochs_s": fgsm}


def on_target_device(result: dict) -> bool:
    """The targets are stated for an H100 at the full sizes (CIFAR shape, batch 512 / 128)."""
    meta = result["metadata"]
    return (harness.device_type(result["device"]) == "cuda" and TARGETS["device"] in str(meta.get("device_name"))
            and not meta.get("quick"))


def targets(result: dict) -> List[dict]:
    applies = on_target_device(result)
    out = []

    def add(target, case, metric, value, threshold, comparison):
        met = None if value is None else (value >= threshold if comparison == ">=" else value <= threshold)
        out.append({"target": target, "case": case["case"], "metric": metric, "value": value, "threshold": threshold,
                    "comparison": comparison, "met": met, "on_target_device": applies})

    for c in result["cases"]:
        if c["kind"] == "pgd-10" and not c.get("skipped"):
            add("PGD-10 AT epoch at least 3x faster than the eager fp32 loop", c, "eager_over_fastrobust",
                c["ratios"].get("eager_over_fastrobust"), TARGETS["pgd_eager_over_fastrobust_min"], ">=")
            add("PGD-10 AT epoch at most 1.15x the (k+1) fwd/bwd floor", c, "fastrobust_over_floor",
                c["ratios"].get("fastrobust_over_floor"), TARGETS["pgd_fastrobust_over_floor_max"], "<=")
        if c["kind"] == "fgsm-rs" and c["model"] == "PreActResNet18" and not c.get("skipped"):
            spe = c["implementations"].get(MAIN, {}).get("seconds_per_epoch")
            add(f"FGSM-RS AT, {FGSM_EPOCHS} epochs of {EPOCH_IMAGES:,} images on PreActResNet-18 in at most 120 s",
                c, f"fastrobust_{FGSM_EPOCHS}_epochs_s", None if spe is None else FGSM_EPOCHS * spe,
                TARGETS["fgsm_15_epochs_s_max"], "<=")
    return out


def finish(result: dict) -> None:
    result["summary"] = summarize(result)
    result["targets"] = targets(result)


# ----------------------------------------------------------------------------- output


CSV_COLUMNS = ["suite", "device", "device_name", "case", "kind", "model", "batch", "image_shape", "impl", "precision",
               "channels_last", "status", "loss_first", "loss_last", "linf_distance", "step_time_s", "iqr_s",
               "rounds", "steps_per_round", "images_per_s", "steps_per_epoch", "seconds_per_epoch",
               "time_over_fastrobust", "eager_over_fastrobust", "fastrobust_over_floor", "note"]


def csv_rows(result: dict):
    for c in result["cases"]:
        base = {"suite": result["suite"], "device": result["device"],
                "device_name": result["metadata"]["device_name"], "image_shape": "x".join(map(str, c["image_shape"])),
                **{k: c.get(k) for k in ("case", "kind", "model", "batch", "steps_per_epoch")}}
        if c.get("error"):
            yield dict(base, status="ERROR", note=c["error"])
        for impl, e in c["implementations"].items():
            losses = e.get("check_losses") or [None]
            ratio = 1.0 if impl == MAIN and e.get("step_time_s") else c["speedup_of_fused"].get(impl)
            yield dict(base, impl=impl, status=status(e), note=note(e), loss_first=losses[0], loss_last=losses[-1],
                       time_over_fastrobust=ratio,
                       eager_over_fastrobust=c["ratios"].get("eager_over_fastrobust") if impl == MAIN else None,
                       fastrobust_over_floor=c["ratios"].get("fastrobust_over_floor") if impl == MAIN else None,
                       **{k: e.get(k) for k in ("precision", "channels_last", "linf_distance", "step_time_s", "iqr_s",
                                                "rounds", "steps_per_round", "images_per_s", "seconds_per_epoch")})


def write_data(result: dict, out_dir, quick: bool) -> None:
    pgd_report.write_data(result, out_dir, quick, CSV_COLUMNS, csv_rows)


def write_results(result: dict, out_dir, quick: bool) -> Dict[str, str]:
    return pgd_report.write_results(result, out_dir, quick, CSV_COLUMNS, csv_rows)


def format_table(result: dict) -> str:
    cuda = harness.device_type(result["device"]) == "cuda"
    header = ["case", "impl", "check", "loss first>last", "linf", "ms/step", "s/epoch", "t/t_fastrobust"]
    rows = [header]
    for c in result["cases"]:
        if c.get("error"):
            rows.append([c["case"], "-", "ERROR"] + ["-"] * (len(header) - 3))
        for impl, e in c["implementations"].items():
            losses = e.get("check_losses") or []
            loss = f"{losses[0]:.3f}>{losses[-1]:.3f}" if len(losses) >= 2 else "-"
            seconds = e.get("step_time_s")
            ratio = 1.0 if impl == MAIN and seconds else c["speedup_of_fused"].get(impl)
            rows.append([c["case"], impl, status(e), loss, _fmt(e.get("linf_distance"), ".4f"),
                         _fmt(None if seconds is None else 1e3 * seconds, ".1f"),
                         _fmt(e.get("seconds_per_epoch"), ".1f"), _fmt(ratio, ".2f", "x")])
    meta = result["metadata"]
    lines = [f"{result['suite']} on {meta['device_name']} ({result['device']}); seconds per epoch = time per step x "
             f"ceil({EPOCH_IMAGES:,} / batch), extrapolated from {meta['timed_steps']} timed step(s) x "
             f"{meta['rounds']} round(s)"]
    lines += results.align(rows)
    lines.append("t/t_fastrobust > 1: fastrobust is faster; floor = (k+1) x fwd/bwd in fastrobust's precision"
                 + ("" if cuda else "; CPU times are noise on a shared machine, the CUDA run is the measurement"))
    for key, projections in result.get("summary", {}).get(f"fgsm_rs_{FGSM_EPOCHS}_epochs_s", {}).items():
        lines.append(f"FGSM-RS {FGSM_EPOCHS} epochs ({key}): " + ", ".join(
            f"{impl} {seconds:.0f} s" for impl, seconds in projections.items()))
    for t in result.get("targets", []):
        verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        where = "" if t["on_target_device"] else f" (not on an {TARGETS['device']} at full size: informative only)"
        lines.append(f"target: {t['target']} [{t['case']}]: {_fmt(t['value'], '.3g')} {t['comparison']} "
                     f"{t['threshold']:g}: {verdict}{where}")
    lines += [f"  {c['case']}: skipped: {c['skipped']}" for c in result["cases"] if c.get("skipped")]
    lines += ["  " + f for f in failures(result)]
    return "\n".join(lines)
