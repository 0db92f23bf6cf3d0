"""Adversarial attacks on the fused PGD engine.

Classes are called like torchattacks' (`PGD(model, eps=8/255)(x, y)` returns x_adv;
`.run(x, y)` returns an AttackResult with success flags, losses and pass counts);
fastrobust.attacks.functional has the same attacks as functions.

    PGD              Madry PGD, L-inf/L2/L1 (sparse L1 steps), random start, restarts folded into the batch, targeted, CE/CW/DLR
    FATPGD, fat_tau  FAT's early-stopped PGD and its dynamic tau schedule
    AlternatingPGD   alternating-objectives PGD (CE/CW/DLR schedules)
    HypocriticalPGD  descent on CE towards the true class (hypocritical examples)
    MIFGSM           momentum iterative FGSM (the NIPS-2017 transfer attack), L-inf/L2
    APGD             AutoAttack's APGD-CE / APGD-DLR / APGD-T, L-inf/L2/L1 (APGD-L1)
    Square           the score-based Square attack (no gradients), L-inf/L2/L1, AutoAttack's schedule
    FAB              the minimal-perturbation FAB / FAB-T, L-inf/L2/L1 (AutoAttack's)
    DeepFool         the minimal-perturbation DeepFool, L2/L-inf, rows batched
    CarliniWagnerL2  Carlini-Wagner's L2 optimisation attack (Adam in tanh space, binary search on c)
    HopSkipJump      the decision-based HopSkipJump, L2/L-inf (decisions only, probes batched)
"""
from . import functional
from .alternating import AlternatingPGD
from .apgd import APGD, apgd_checkpoints
from .cw import CarliniWagnerL2
from .deepfool import DeepFool
from .engine import Attack
from .fab import FAB
from .fat import FATPGD, fat_tau
from .hop_skip_jump import HopSkipJump
from .hypocritical import HypocriticalPGD
from .mifgsm import MIFGSM
from .pgd import PGD
from .result import AttackResult
from .square import Square

__all__ = ["APGD", "AlternatingPGD", "Attack", "AttackResult", "CarliniWagnerL2", "DeepFool", "FAB", "FATPGD", "HopSkipJump", "HypocriticalPGD", "MIFGSM", "PGD",
           "Square", "apgd_checkpoints", "fat_tau", "functional"]
