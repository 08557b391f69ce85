"""Sample a 2-D Gaussian mixture with the exact noise predictor: no training, exact answer.

For data x0 ~ sum_k w_k N(mu_k, s^2 I), the noised marginal at index t is the mixture
sum_k w_k N(sqrt(abar_t) mu_k, (abar_t s^2 + 1 - abar_t) I), whose score is known in closed
form; eps(x_t, t) = -sqrt(1 - abar_t) * score. Every ddpmlab sampler takes it as the model.
Run: python examples/toy_2d.py
"""

import torch

from ddpmlab import sample, schedules

means = torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]])
weights = torch.tensor([0.5, 0.3, 0.2])
std = 0.1
sched = schedules.linear(T=1000)


def exact_eps(x_t, t):
    abar = sched.alpha_bar.to(x_t)[t][:, None, None]           # [N, 1, 1]
    mu = abar.sqrt() * means                                   # [N, K, 2]
    var = abar * std**2 + 1 - abar                             # [N, 1, 1]
    logp = torch.log(weights) - ((x_t[:, None] - mu) ** 2).sum(-1) / (2 * var[..., 0])
    resp = torch.softmax(logp, dim=1)[..., None]               # [N, K, 1]
    score = (resp * (mu - x_t[:, None]) / var).sum(1)          # [N, 2]
    return -(1 - abar[:, 0]).sqrt() * score


g = torch.Generator().manual_seed(0)
for sampler, steps in [("ddpm", None), ("ddim", 50), ("dpm_solver", 20)]:
    x = sample(exact_eps, sched, shape=(3000, 2), sampler=sampler, steps=steps, generator=g)
    share = torch.bincount(torch.cdist(x, means).argmin(1), minlength=3) / len(x)
    print(f"{sampler:>10} ({steps or 1000:>4} steps): mode shares {share.numpy().round(3)}"
          f" (true {weights.numpy()})")
