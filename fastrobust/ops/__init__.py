"""Public functional API of the fused ops (fall back to fastrobust.reference without _C)."""
from .cifs import cifs_reweight, cifs_targets, linear_relevance, mlp_relevance
from .cifs_layer import cifs_layer
from .margin_loss import margin_loss
from .median import median3x3
from .nlm import nlm_dot, nlm_gaussian, nlm_gaussian_path
from .pgd import apgd_step_, pgd_random_init_, pgd_step_, pgd_update_best_
from .sparta import sparta

# Every op of the `fastrobust` library, with its backward ops: what `fastrobust info` reports.
OPS = {
    "sparta": ("sparta", "_sparta_backward"),
    "pgd": ("pgd_step_", "pgd_random_init_", "pgd_update_best_", "apgd_step_"),
    "margin_loss": ("margin_loss", "_margin_loss_backward"),
    "cifs_reweight": ("cifs_reweight", "_cifs_reweight_backward"),
    "nlm_gaussian": ("nlm_gaussian", "_nlm_gaussian_backward"),
    "median3x3": ("median3x3", "_median3x3_backward"),
}

__all__ = ["OPS", "apgd_step_", "cifs_layer", "cifs_reweight", "cifs_targets", "linear_relevance", "margin_loss", "median3x3", "mlp_relevance", "nlm_dot", "nlm_gaussian", "nlm_gaussian_path", "pgd_random_init_", "pgd_step_", "pgd_update_best_", "sparta"]
