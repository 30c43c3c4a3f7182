"""Gaussian mixtures: closed-form perturbed densities and scores under a linear SDE.

q_0 = sum_k pi_k N(mu_k, Sigma_k) stays a mixture under x(t) = a(t) x(0) + sqrt(v(t)) z:

    q_t = sum_k pi_k N(m_k, C_k),  m_k = a(t) mu_k,  C_k = a(t)^2 Sigma_k + v(t) I
    s(x, t) = sum_k w_k(x, t) C_k^{-1} (m_k - x),  w = softmax_k(log pi_k + log N(x; m_k, C_k))

Sigma_k = 0 is allowed (then C_k = v(t) I): the empirical distribution of a data set is such a
mixture, so its perturbed score ("ideal denoiser") is exact too. Everything is differentiable in
x and t (log-sum-exp, Cholesky), and float64-clean.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from scorefpe.sde import SDE

Tensor = torch.Tensor
ScoreFn = Callable[[Tensor, Tensor], Tensor]


class GaussianMixture:
    """A mixture sum_k pi_k N(mu_k, Sigma_k) in R^D with full (possibly zero) covariances.

    Args:
        weights: (K,) positive, normalised here.
        means: (K, D).
        covariances: (K, D, D) symmetric positive semi-definite, or None for all zero (an
            empirical distribution). A (K,) tensor of variances means isotropic Sigma_k = c_k I.

    The perturbed density needs v(t) > 0 wherever some Sigma_k is singular (any t > 0).
    Cost of `score`/`log_prob` at B points: O(B K D^3) for full covariances (a Cholesky per
    point and component, since C_k depends on each point's t), O(B K D) for isotropic ones.

    Raises:
        ValueError: shapes that do not match, non-positive weights, non-symmetric or indefinite
            covariances, non-finite entries.
    """

    def __init__(
        self, weights: Tensor, means: Tensor, covariances: Tensor | None = None
    ) -> None:
        weights = torch.as_tensor(weights)
        means = torch.as_tensor(means)
        if not means.is_floating_point():
            means = means.to(torch.get_default_dtype())
        dtype = means.dtype
        weights = weights.to(dtype)
        if means.dim() != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        k, d = means.shape
        if weights.shape != (k,):
            raise ValueError(f"weights must have shape (K,) = ({k},), got {tuple(weights.shape)}")
        if not bool(torch.isfinite(weights).all()) or bool((weights <= 0).any()):
            raise ValueError("weights must be finite and positive")
        if not bool(torch.isfinite(means).all()):
            raise ValueError("means contain NaN or infinite values")
        self.isotropic = covariances is None or torch.as_tensor(covariances).dim() == 1
        if covariances is None:
            cov = torch.zeros(k, dtype=dtype)
        else:
            cov = torch.as_tensor(covariances).to(dtype)
            if cov.dim() == 1:
                if cov.shape != (k,) or bool((cov < 0).any()):
                    raise ValueError("isotropic variances must have shape (K,) and be >= 0")
            elif cov.shape != (k, d, d):
                raise ValueError(
                    f"covariances must have shape (K, D, D) = ({k}, {d}, {d}), got {tuple(cov.shape)}"
                )
            else:
                if not bool(torch.isfinite(cov).all()):
                    raise ValueError("covariances contain NaN or infinite values")
                if not torch.allclose(cov, cov.transpose(1, 2), atol=1e-12, rtol=1e-10):
                    raise ValueError("covariances must be symmetric")
                ev = torch.linalg.eigvalsh(cov)
                if bool((ev < -1e-10 * ev.abs().amax(-1, keepdim=True).clamp_min(1.0)).any()):
                    raise ValueError("covariances must be positive semi-definite")
        self.weights = weights / weights.sum()
        self.means = means
        self.covariances = cov
        self.dim = d

    @property
    def n_components(self) -> int:
        """K, the number of mixture components."""
        return self.means.shape[0]

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "GaussianMixture":
        """A copy in another dtype / device."""
        return GaussianMixture(
            self.weights.to(dtype=dtype, device=device),
            self.means.to(dtype=dtype, device=device),
            None
            if self.isotropic and not bool(self.covariances.any())
            else self.covariances.to(dtype=dtype, device=device),
        )

    # -- sampling ------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples of q_0, shape (n, D), in the mixture's dtype."""
        dtype = self.means.dtype
        comp = torch.multinomial(self.weights.double().cpu(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=dtype)
        if self.isotropic:
            noise = z * self.covariances[comp].clamp_min(0).sqrt()[:, None]
        else:
            # Eigen-decomposition square root: Cholesky fails on singular covariances.
            ev, vec = torch.linalg.eigh(self.covariances)
            root = vec * ev.clamp_min(0).sqrt()[:, None, :]
            noise = torch.einsum("nij,nj->ni", root[comp], z)
        return self.means[comp] + noise

    # -- perturbed density ----------------------------------------------------------------
    def _component_terms(self, x: Tensor, t: Tensor, sde: SDE) -> tuple[Tensor, Tensor]:
        """log pi_k + log N(x; m_k, C_k) (B, K) and C_k^{-1}(m_k - x) (B, K, D)."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        w = self.weights.to(x)
        mu = self.means.to(x)
        a = sde.mean_coeff(t)  # (B,)
        v = sde.marginal_var(t)  # (B,)
        diff = a[:, None, None] * mu[None] - x[:, None, :]  # m_k - x, (B, K, D)
        d = self.dim
        if self.isotropic:
            c = a[:, None] ** 2 * self.covariances.to(x)[None] + v[:, None]  # (B, K)
            sol = diff / c[..., None]
            quad = (diff * sol).sum(-1)
            logdet = d * c.log()
        else:
            cov = a[:, None, None, None] ** 2 * self.covariances.to(x)[None] + v[
                :, None, None, None
            ] * torch.eye(d, dtype=x.dtype, device=x.device)
            chol = torch.linalg.cholesky(cov)  # (B, K, D, D)
            y = torch.linalg.solve_triangular(chol, diff[..., None], upper=False)
            sol = torch.linalg.solve_triangular(chol.transpose(-1, -2), y, upper=True)[..., 0]
            quad = y[..., 0].pow(2).sum(-1)
            logdet = 2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
        logn = -0.5 * (quad + logdet + d * math.log(2 * math.pi))
        return w.log()[None] + logn, sol

    def log_prob(self, x: Tensor, t: Tensor, sde: SDE) -> Tensor:
        """log q_t(x) of the perturbed mixture, shape (B,). x: (B, D), t: (B,)."""
        logits, _ = self._component_terms(x, t, sde)
        return torch.logsumexp(logits, dim=-1)

    def score(self, x: Tensor, t: Tensor, sde: SDE) -> Tensor:
        """s(x, t) = grad_x log q_t(x) = sum_k w_k C_k^{-1}(m_k - x), shape (B, D)."""
        logits, sol = self._component_terms(x, t, sde)
        resp = torch.softmax(logits, dim=-1)
        return (resp[..., None] * sol).sum(1)

    def score_jacobian(self, x: Tensor, t: Tensor, sde: SDE) -> Tensor:
        """Closed-form Hessian of log q_t, J[b, r, c] = d s_r / d x_c, shape (B, D, D).

        J = sum_k w_k (u_k u_k^T - C_k^{-1}) - s s^T with u_k = C_k^{-1}(m_k - x): a ground truth
        written from the formula, independent of the autodiff operators it is used to test.
        """
        logits, sol = self._component_terms(x, t, sde)
        resp = torch.softmax(logits, dim=-1)
        s = (resp[..., None] * sol).sum(1)
        d = self.dim
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        a = sde.mean_coeff(t)
        v = sde.marginal_var(t)
        if self.isotropic:
            c = a[:, None] ** 2 * self.covariances.to(x)[None] + v[:, None]
            cinv = eye / c[..., None, None]
        else:
            cov = a[:, None, None, None] ** 2 * self.covariances.to(x)[None] + v[:, None, None, None] * eye
            cinv = torch.cholesky_inverse(torch.linalg.cholesky(cov))
        outer = sol[..., :, None] * sol[..., None, :]
        jac = (resp[..., None, None] * (outer - cinv)).sum(1)
        return jac - s[:, :, None] * s[:, None, :]

    def score_fn(self, sde: SDE) -> ScoreFn:
        """The closed-form score s(x, t) = grad_x log q_t(x) under ``sde`` as a ``score_fn(x, t)``
        callable for the operators: x (B, D), t (B,) -> (B, D); cost as `score`."""
        return lambda x, t: self.score(x, t, sde)

    def log_prob_fn(self, sde: SDE) -> Callable[[Tensor, Tensor], Tensor]:
        """The closed-form log-density log q_t(x) under ``sde`` as a ``log_prob_fn(x, t)``
        callable: x (B, D), t (B,) -> (B,); cost as `log_prob`."""
        return lambda x, t: self.log_prob(x, t, sde)
