"""Training recipes: small strategy objects turning (model, x, y) into the loss of a batch.

    standard  CE on clean inputs                 pgd     Madry PGD-AT
    fat       FAT (early-stopped PGD)            trades  TRADES
    fgsm      FGSM-AT (Wong et al.) + tricks     iat     interpolated AT
    spat      self-paced AT                      thrm    hypocritical risk minimisation
    jsigr     J-SIGR-style gradient regularisation (Jacobian norm + selective input gradient)
    tisode    TisODE: CE + the ODE blocks' steady-state loss, Gaussian-noise augmentation
    hgd       HGD: a guided denoiser (DUNet) for a frozen classifier (the target checkpoint)
    ladder    LADDER: fine-tuning on latent boundary-guided examples (the target checkpoint)

Importing this package registers every recipe module present in RECIPES.
"""
import importlib as _importlib

from .base import RECIPES, BatchOutput, Recipe, StepContext, create_recipe, register_recipe
from . import pgd, standard  # noqa: F401  (registration)

_OPTIONAL = ("fat", "trades", "fgsm", "iat", "spat", "thrm", "jsigr", "tisode", "hgd", "ladder")
for _name in _OPTIONAL:
    try:
        _importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:  # only a module not written yet is skipped
        if _exc.name != f"{__name__}.{_name}":
            raise
del _name

__all__ = ["RECIPES", "BatchOutput", "Recipe", "StepContext", "create_recipe", "register_recipe"]
