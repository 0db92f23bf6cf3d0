"""LADDER: latent boundary-guided adversarial training (Zhou et al.; spec/methods-more.md §5).

- latent:   latent_features (the frozen classifier's own features), LatentDecoder, fit_decoder.
- pair_svm: PairSVM (one attention SVM per class pair, all pairs batched), fit_pair_svm.
- generate: boundary_examples, flip_search, label_fidelity.
"""
from .generate import boundary_examples, flip_search, label_fidelity, move_latents, random_targets
from .latent import LatentDecoder, fit_decoder, latent_features, logits_from_latent
from .pair_svm import PairSVM, fit_pair_svm, pair_batches, pair_svm_loss

__all__ = ["LatentDecoder", "PairSVM", "boundary_examples", "fit_decoder", "fit_pair_svm", "flip_search",
           "label_fidelity", "latent_features", "logits_from_latent", "move_latents", "pair_batches",
           "pair_svm_loss", "random_targets"]
