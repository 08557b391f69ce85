r"""UniPC (Zhao et al. 2023, https://arxiv.org/abs/2302.04867): the unified predictor-corrector
with B(h) = e^h - 1 ("bh2") in data (x0) prediction, order 2, as diffusers'
``UniPCMultistepScheduler`` runs it by default.

With alpha, sigma the VP coefficients (alpha^2 + sigma^2 = 1), lambda = log(alpha / sigma),
h = lambda_next - lambda, m the model's x0 estimates and B = expm1(-h):

    UniP-p (predictor): x_next = (sigma_next / sigma) x - alpha_next B m_0
                                 - alpha_next B rho_p sum_k D_k,   D_k = (m_k - m_0) / r_k,
                        r_k = (lambda_k - lambda) / h (earlier steps), rho_p = 1/2 for p = 2;
    UniC-p (corrector): once the model has seen x_next (m_new), before the next predictor,
                        x_next <- (sigma_next / sigma) x - alpha_next B m_0
                                  - alpha_next B (sum_k rho_k D_k + rho_p (m_new - m_0)),
                        rho solving R rho = b with R_ij = r_j^(i-1) (r_p = 1) and
                        b_i = i! h phi_{i+1}(-h) / B (the paper's phi functions, its
                        Algorithm 2; rho = 1/2 for p = 1).

The corrector reuses the evaluation the next predictor needs: one network evaluation per step.
The first step is first order, the order is 2 afterwards and 1 again at the last step (diffusers'
``lower_order_final``); the last step returns the x0 estimate: no noise at the last step. The
history (x0 estimates, lambdas, the last x before correction, the order used) lives in ``state``.
"""

from __future__ import annotations

import math

import torch

from .base import StepContext, describe

ORDER = 2


def _alpha_sigma_lambda(sigma_ve: float) -> tuple[float, float, float]:
    alpha = 1.0 / math.sqrt(1.0 + sigma_ve * sigma_ve)
    return alpha, sigma_ve * alpha, -math.log(sigma_ve)


def _rhos_c(rks: list[float], h: float, order: int) -> list[float]:
    """UniC's coefficients for ``order`` (rks: r_k of the earlier steps, then 1)."""
    if order == 1:
        return [0.5]
    hh = -h
    h_phi_k = math.expm1(hh) / hh - 1.0
    b_h = math.expm1(hh)
    factorial = 1
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return torch.linalg.solve(torch.tensor(rows, dtype=torch.float64),
                              torch.tensor(b, dtype=torch.float64)).tolist()


@describe(order=2, nfe_per_step=1, stochastic="no", spacing="karras",
          about="UniPC-bh2 predictor-corrector, order 2 (Zhao et al. 2023)")
def unipc_step(ctx: StepContext, x: torch.Tensor, t, t_prev,
               state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One UniPC step: correct x with this step's evaluation, then predict x_{t_prev}."""
    i = state.get("i", 0)
    pred = ctx.predict(x, t)
    m = pred.x0
    if t_prev < 0:  # the last predictor is first order and returns m; no correction is needed
        return m, m
    alpha, sigma, lam = _alpha_sigma_lambda(ctx.sigma(t))
    ms, lams = state.setdefault("m", []), state.setdefault("lam", [])
    if i > 0:  # UniC with the order the previous predictor used
        p = state["order"]
        a0, s0, l0 = state["coefs"]
        h = lam - l0
        rks = [(lams[-(k + 1)] - l0) / h for k in range(1, p)] + [1.0]
        d1s = [(ms[-(k + 1)] - ms[-1]) / rks[k - 1] for k in range(1, p)]
        rhos = _rhos_c(rks, h, p)
        b_h = math.expm1(-h)
        corr = sum((r * dk for r, dk in zip(rhos[:-1], d1s, strict=True)), torch.zeros_like(m))
        x = (sigma / s0) * state["x_last"] - alpha * b_h * ms[-1] \
            - alpha * b_h * (corr + rhos[-1] * (m - ms[-1]))
    ms.append(m)
    lams.append(lam)
    del ms[:-ORDER], lams[:-ORDER]
    order = min(ORDER, ctx.steps - i, state.get("warm", 0) + 1)
    alpha_n, sigma_n, lam_n = _alpha_sigma_lambda(ctx.sigma(t_prev))
    h = lam_n - lam
    b_h = math.expm1(-h)
    x_next = (sigma_n / sigma) * x - alpha_n * b_h * m
    if order == 2:
        r = (lams[-2] - lam) / h
        x_next = x_next - alpha_n * b_h * 0.5 * (ms[-2] - m) / r
    state.update(i=i + 1, order=order, coefs=(alpha, sigma, lam), x_last=x,
                 warm=min(state.get("warm", 0) + 1, ORDER))
    return x_next, m
