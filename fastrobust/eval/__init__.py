"""Robustness evaluation: attack cascades with timing and pass counts, gradient-masking
checks, reports (JSON / CSV / Markdown) and plots.

    from fastrobust.eval import evaluate, write_report
    report = evaluate(model, (x_test, y_test), attacks=["pgd20", "apgd-ce", "apgd-dlr"], eps=8/255,
                      checks=True)
    print(report.summary())
    write_report(report, "out/eval")

- presets:  PRESETS / make_attack: named attacks (pgd20, pgd100-restarts5, cw, apgd-ce, apgd-dlr,
            apgd-t, alt-ce-cw-dlr, fat, mifgsm, fgsm, tisode-fgsm, tisode-pgd, square, fab, ...;
            "transfer" crafts on evaluate's surrogate), step sizes relative to eps.
- evaluate: evaluate(...) -> EvalReport (clean accuracy, the cascade, hypocritical risk, the
            accuracy under Gaussian noise).
- records:  EvalReport and AttackReport (what evaluate returns; to_dict, summary).
- masking:  the gradient-masking checks (CheckResult, GradientMaskingWarning), BPDA, EOT.
- report:   write_report(report, out_dir), collect_metadata.
- plots:    accuracy vs eps / steps, attack loss curves, training curves, benchmark ratios.
- saliency: input_gradient_saliency, saliency_figure (input-gradient and perturbation maps of
            several models side by side, PNG).
"""
from .evaluate import evaluate
from .gradient_wrappers import BPDA, EOT, bpda_wrap
from .masking import (ALL_CHECKS, CHECKS, DEFAULT_CHECKS, CheckResult, GradientMaskingWarning,
                      attack_loss_curve, check_eps_sweep, check_loss_curve, check_randomness,
                      check_steps, check_transfer, check_zero_gradients, run_checks, train_surrogate)
from .presets import DEFAULT_ATTACKS, PRESETS, Preset, get_preset, make_attack, register_preset
from .records import AttackReport, EvalReport
from .report import collect_metadata, write_report
from .saliency import input_gradient_saliency, saliency_figure

__all__ = [
    "evaluate", "EvalReport", "AttackReport",
    "PRESETS", "DEFAULT_ATTACKS", "Preset", "get_preset", "make_attack", "register_preset",
    "CheckResult", "GradientMaskingWarning", "DEFAULT_CHECKS", "ALL_CHECKS", "CHECKS", "run_checks",
    "check_randomness", "check_zero_gradients", "check_eps_sweep", "check_steps", "check_loss_curve",
    "check_transfer", "attack_loss_curve", "train_surrogate", "BPDA", "bpda_wrap", "EOT",
    "write_report", "collect_metadata", "input_gradient_saliency", "saliency_figure",
]
