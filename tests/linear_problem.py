"""A linear classifier whose distance to each decision boundary is known in closed form: the
check of the minimal-perturbation attacks (DeepFool, FAB)."""
import torch
from torch import nn


def linear_problem(seed=0, classes=5, n=64):
    """(model, x, y): f(x) = W x + b on 2 x 3 x 3 inputs in float64, x inside the box and far
    enough from its faces that no step is clipped, y the model's own predictions."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, classes)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(classes, 18, generator=gen, dtype=torch.float64))
        model[1].bias.copy_(torch.randn(classes, generator=gen, dtype=torch.float64))
    x = 0.5 + 0.02 * torch.randn(n, 2, 3, 3, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def boundary_distances(model, x, y, dual) -> torch.Tensor:
    """min_k |f_k - f_y| / ||w_k - w_y||_dual per row: the smallest perturbation (in the norm
    whose dual is `dual`) that reaches another class, ignoring the box."""
    w, b = model[1].weight.detach(), model[1].bias.detach()
    f = x.flatten(1) @ w.t() + b
    classes = w.shape[0]
    return torch.tensor([min(abs(float(f[i, k] - f[i, y[i]])) / float((w[k] - w[y[i]]).norm(p=dual))
                             for k in range(classes) if k != y[i]) for i in range(x.shape[0])], dtype=torch.float64)
