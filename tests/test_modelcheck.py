"""Tests of scorefpe.modelcheck and the `check --model` CLI function (issue 9)."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from scorefpe.cli.main import main
from scorefpe.cli.modelcheck_cmd import add_model_options, model_option_names, run_model_check
from scorefpe.modelcheck import (
    ModelReport,
    Param,
    Stat,
    check_model,
    load_model,
    mean_se,
    parse_param,
    parse_t_grid,
    probe_model,
    score_to_output,
    to_score_fn,
)
from scorefpe.sde import SubVPSDE, VESDE, VPSDE

D64 = torch.float64
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


# ---------------------------------------------------------------------------------------------
# A Gaussian q_0 = N(mu, Sigma): score, eps and x0 predictors written independently from the
# posterior means (Tweedie), so that the conversions are checked against closed forms.
# ---------------------------------------------------------------------------------------------
MU = torch.tensor([0.7, -1.2, 0.3], dtype=D64)
SIG = torch.tensor([[1.0, 0.2, 0.0], [0.2, 0.6, 0.1], [0.0, 0.1, 0.3]], dtype=D64)


def _cov(sde, t):
    a, v = sde.mean_coeff(t), sde.marginal_var(t)
    return a[:, None, None] ** 2 * SIG + v[:, None, None] * torch.eye(3, dtype=D64)


def g_score(sde):
    def s(x, t):
        a = sde.mean_coeff(t)
        return -torch.linalg.solve(_cov(sde, t), (x - a[:, None] * MU)[..., None])[..., 0]
    return s


def g_eps(sde):
    # E[z | x] = Cov(z, x) Cov(x)^{-1} (x - E x) = std C^{-1} (x - a mu)
    def e(x, t):
        a, std = sde.mean_coeff(t), sde.marginal_std(t)
        return std[:, None] * torch.linalg.solve(_cov(sde, t), (x - a[:, None] * MU)[..., None])[..., 0]
    return e


def g_x0(sde):
    # E[x0 | x] = mu + a Sigma C^{-1} (x - a mu)
    def f(x, t):
        a = sde.mean_coeff(t)
        sol = torch.linalg.solve(_cov(sde, t), (x - a[:, None] * MU)[..., None])[..., 0]
        return MU + a[:, None] * sol @ SIG.T
    return f


def g_v(sde):
    # v = a z - std x0 (Salimans & Ho 2022), so E[v | x] = a E[z | x] - std E[x0 | x]
    def v(x, t):
        a, std = sde.mean_coeff(t), sde.marginal_std(t)
        return a[:, None] * g_eps(sde)(x, t) - std[:, None] * g_x0(sde)(x, t)
    return v


# subvp: a^2 + var != 1 and a != 1, so the general v formula is exercised beyond VP and VE.
@pytest.mark.parametrize("sde", [VPSDE(), VESDE(), SubVPSDE()], ids=["vp", "ve", "subvp"])
def test_conversions_exact_on_gaussian(sde):
    gen = torch.Generator().manual_seed(1)
    x = 2 * torch.randn(64, 3, generator=gen, dtype=D64)
    t = 1e-3 + (1 - 1e-3) * torch.rand(64, generator=gen, dtype=D64)
    s = g_score(sde)(x, t)
    for param, model in (("score", g_score(sde)), ("eps", g_eps(sde)), ("x0", g_x0(sde)),
                         ("v", g_v(sde)), ("epsilon", g_eps(sde)), ("v_prediction", g_v(sde))):
        got = to_score_fn(model, sde, param)(x, t)
        torch.testing.assert_close(got, s, rtol=1e-9, atol=1e-9 * float(s.abs().max()))
        # the inverse map reproduces the independent closed-form model output
        back = score_to_output(g_score(sde), sde, param)(x, t)
        ref = model(x, t)
        torch.testing.assert_close(back, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))


def test_conversion_is_not_identity():
    # A wrong conversion (e.g. forgetting the sign or the std) must fail the exactness test.
    sde = VPSDE()
    x = torch.randn(8, 3, dtype=D64)
    t = torch.full((8,), 0.3, dtype=D64)
    assert not torch.allclose(to_score_fn(g_eps(sde), sde, "score")(x, t), g_score(sde)(x, t))
    # v read as eps (the VP identity eps = a v + std x dropped) is not the score either
    assert not torch.allclose(to_score_fn(g_v(sde), sde, "eps")(x, t), g_score(sde)(x, t), rtol=1e-3)


def test_v_conversion_vp_is_diffusers_identity():
    # For VP a^2 + var = 1, so eps = a v + std x and x0 = a x - std v (diffusers' v_prediction).
    sde = VPSDE()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(16, 3, generator=gen, dtype=D64)
    t = 0.05 + 0.9 * torch.rand(16, generator=gen, dtype=D64)
    a, std = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]
    v = g_v(sde)(x, t)
    torch.testing.assert_close(a * v + std * x, g_eps(sde)(x, t), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(a * x - std * v, g_x0(sde)(x, t), rtol=1e-9, atol=1e-12)


def test_parse_param_rejects_unknown():
    assert parse_param("EPS") is Param.EPS
    assert parse_param("V") is Param.V
    assert parse_param("epsilon") is Param.EPS and parse_param("Epsilon") is Param.EPS
    assert parse_param("sample") is Param.X0 and parse_param("v_prediction") is Param.V
    with pytest.raises(ValueError, match="'velocity'.*'score', 'eps', 'x0', 'v'.*'epsilon'"):
        parse_param("velocity")
    with pytest.raises(ValueError, match="'Vel'.*'score', 'eps', 'x0', 'v'"):  # named as given
        parse_param("Vel")


# ---------------------------------------------------------------------------------------------
# Linear fields s = A x: Asym, NAsym, ||J||_F^2, div known exactly from A.
# ---------------------------------------------------------------------------------------------
def _linear(a_mat):
    return lambda x, t: x @ a_mat.to(x).T


def _std_normal(d):
    return lambda n, g=None: torch.randn(n, d, generator=g, dtype=D64)


def _exact_linear_values(a_mat):
    fro = float(a_mat.pow(2).sum())
    asym = float((a_mat - a_mat.T).pow(2).sum()) / 2
    return dict(asym=asym, nasym=asym / (2 * fro), jac_fro_sq=fro / a_mat.shape[0],
                div_mean=float(torch.trace(a_mat)))


@pytest.mark.parametrize("kind", ["general", "transpose", "symmetric", "antisymmetric"])
def test_asym_nasym_linear_exact(kind):
    g = torch.Generator().manual_seed(3)
    a = torch.randn(4, 4, generator=g, dtype=D64)
    a = {"general": a, "transpose": a.T, "symmetric": a + a.T, "antisymmetric": a - a.T}[kind]
    rep = check_model(_linear(a), VPSDE(), _std_normal(4), t_grid=[0.1, 0.5], n_points=8,
                      generator=g, mode="exact", compute_dsm=False)
    want = _exact_linear_values(a)
    for q, v in want.items():
        for s in rep.stats[q]:
            assert s.mean == pytest.approx(v, rel=1e-12, abs=1e-12), q
    if kind == "symmetric":
        assert want["nasym"] == 0.0
    if kind == "antisymmetric":
        assert rep.stats["nasym"][0].mean == pytest.approx(1.0, rel=1e-12)


def test_asym_of_a_and_its_transpose_agree():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 3, generator=g, dtype=D64)
    r1 = check_model(_linear(a), VPSDE(), _std_normal(3), t_grid=[0.2], n_points=4, generator=g,
                     compute_dsm=False)
    r2 = check_model(_linear(a.T), VPSDE(), _std_normal(3), t_grid=[0.2], n_points=4,
                     generator=g, compute_dsm=False)
    assert r1.stats["asym"][0].mean == pytest.approx(r2.stats["asym"][0].mean, rel=1e-12)
    assert r1.stats["asym"][0].mean > 0.1


def _linear_rfp(a, sde, t):
    # s = A x, time independent: eps = -grad L = -(g^2 A^T A - c (A + A^T)) x with f = c x.
    tt = torch.tensor([t], dtype=D64)
    g2 = float(sde.diffusion(tt) ** 2)
    c = float(sde.drift_coeff(tt))
    m = g2 * a.T @ a - c * (a + a.T)
    return float(m.pow(2).sum()) / a.shape[0]  # E_x ||M x||^2 / D for x ~ N(0, I)


def test_confidence_intervals_cover_at_stated_rate():
    """Estimated mode on s = A x, VP, x0 ~ N(0, I) (so x(t) ~ N(0, I)): each 95% CI must cover
    the exact value in ~95% of 200 independent runs. Binomial sd = sqrt(200*.95*.05) = 3.1: require
    178 <= covered (3.9 sd below 190; the normal CI of a skewed per-point quantity undercovers a
    little at n = 200, measured 184-189 here) and covered <= 198 (P = 4e-4 at 95%), so an SE
    that misses the probe noise, or is off by sqrt(n) either way, fails.
    """
    sde = VPSDE()
    g = torch.Generator().manual_seed(5)
    d = 4
    a = torch.randn(d, d, generator=g, dtype=D64) / 2
    t = 0.3
    want = _exact_linear_values(a)
    want["r_fp"] = _linear_rfp(a, sde, t)
    del want["nasym"]  # a ratio of estimates: biased at small D, see test below
    n_rep, covered = 200, {q: 0 for q in want}
    for _ in range(n_rep):
        rep = check_model(_linear(a), sde, _std_normal(d), t_grid=[t], n_points=200, n_probes=2,
                          generator=g, mode="estimated", compute_dsm=False, batch_size=200)
        for q, v in want.items():
            covered[q] += rep.stats[q][0].covers(v)
    for q in ("r_fp", "jac_fro_sq", "div_mean", "asym"):
        assert 178 <= covered[q] <= 198, (q, covered[q])


def test_estimated_nasym_close_at_moderate_dim():
    # NAsym in estimated mode is a per-point ratio of independent estimates: bias ~ CV^2 of the
    # ||J||_F^2 estimate (~1/D here, K = 4): within 4 SE of the exact value at D = 64.
    sde = VPSDE()
    g = torch.Generator().manual_seed(7)
    d = 64
    a = torch.randn(d, d, generator=g, dtype=D64) / 8
    want = _exact_linear_values(a)
    rep = check_model(_linear(a), sde, _std_normal(d), t_grid=[0.3], n_points=64, n_probes=4,
                      generator=g, compute_dsm=False)
    assert rep.meta["exact"] is False  # auto mode at D > 16
    s = rep.stats["nasym"][0]
    assert abs(s.mean - want["nasym"]) <= 4 * s.se
    assert s.se < 0.1 * want["nasym"]


def test_estimated_rfp_product_is_unbiased_where_square_is_not():
    # True score of gmm8 (nonlinear, so the Hutchinson noise of grad_x div s is not zero), d_t s
    # exact: eps = 0. The product <eps_1, eps_2>/D has mean 0 within its CI; the naive square
    # ||eps_hat||^2/D of one estimate is biased up by tr Cov / D: its own CI excludes 0.
    from scorefpe import operators as ops
    from scorefpe.data.synthetic import get_dataset

    sde = VPSDE()
    g = torch.Generator().manual_seed(6)
    ds = get_dataset("gmm8")
    rep = check_model(ds.score_fn(sde), sde, ds.sample, t_grid=[0.2, 0.5], n_points=400,
                      n_probes=1, generator=g, mode="estimated", time_method="exact",
                      batch_size=400)
    assert "forward-mode" in rep.meta["mode"]
    for t, s in zip(rep.t, rep.stats["r_fp"]):
        assert s.se > 1e-6  # there is probe noise
        assert abs(s.mean) <= 4 * s.se
        x, _ = sde.perturb(ds.sample(400, g), torch.full((400,), t, dtype=D64), g)
        e = ops.fp_residual(ds.score_fn(sde), sde, x, t, method="estimated", n_probes=1,
                            generator=g, time_method="exact")
        naive = mean_se(e.pow(2).sum(-1) / 2)
        assert naive.mean > 3 * naive.se  # the square's CI excludes the true value 0


# ---------------------------------------------------------------------------------------------
# Report object
# ---------------------------------------------------------------------------------------------
def test_mean_se_and_stat():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=D64)
    s = mean_se(v)
    assert s.mean == 2.5
    assert s.se == pytest.approx(math.sqrt(np.var([1, 2, 3, 4], ddof=1) / 4))
    assert Stat(0.0, 1.0).covers(1.9) and not Stat(0.0, 1.0).covers(2.0)


@settings(max_examples=25, deadline=None)
@given(st.floats(1e-4, 0.5), st.floats(0.51, 1.0), st.integers(2, 20))
def test_parse_t_grid_log_spaced(lo, hi, n):
    grid = parse_t_grid(f"{lo}:{hi}:{n}")
    assert len(grid) == n and grid[0] == pytest.approx(lo) and grid[-1] == hi
    ratios = np.diff(np.log(grid))
    assert np.allclose(ratios, ratios[0], rtol=1e-9)


@pytest.mark.parametrize("spec", ["1:0.1:3", "0:1:3", "1e-3:2:3", "a:b:c", "1e-3:1", "1e-3:1:0", ""])
def test_parse_t_grid_rejects(spec):
    with pytest.raises(ValueError, match="t-grid"):
        parse_t_grid(spec)


def test_report_writers(tmp_path):
    sde = VPSDE()
    rep = check_model(g_score(sde), sde, _std_normal(3), t_grid=[0.1, 1.0], n_points=5,
                      generator=torch.Generator().manual_seed(0), true_score_fn=g_score(sde),
                      meta={"model": "gaussian"})
    assert isinstance(rep, ModelReport)
    js = json.loads(rep.to_json())
    assert js["meta"]["dim"] == 3 and len(js["rows"]) == 2
    assert set(js["rows"][0]) >= {"t", "r_fp", "nasym", "dsm", "true_dist"}
    lines = rep.to_csv().strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("t,r_fp_mean")
    md = rep.to_markdown()
    assert "| t | r_FP" in md and "n_points: 5" in md
    # renders as one table: the pipes of ||J||_F^2/D are escaped, every row has 1 + 9 cells
    from test_docs_tables import gfm_cells, table_errors

    assert "\\|\\|J\\|\\|_F^2/D" in md and table_errors(md) == []
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(rows) == 3 and {gfm_cells(ln) for ln in rows} == {1 + len(rep.quantities)}
    png = rep.plot(tmp_path / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_probe_model_checks():
    x = torch.zeros(3, 2, dtype=D64)
    t = torch.full((3,), 0.5, dtype=D64)
    probe_model(lambda x, t: x, x, t)
    with pytest.raises(ValueError, match="shape"):
        probe_model(lambda x, t: x[:, :1], x, t)
    with pytest.raises(ValueError, match="dtype"):
        probe_model(lambda x, t: x.float(), x, t)
    with pytest.raises(ValueError, match="NaN"):
        probe_model(lambda x, t: x * float("nan"), x, t)
    with pytest.raises(ValueError, match="ZeroDivisionError"):
        probe_model(lambda x, t: 1 / 0, x, t)
    with pytest.raises(ValueError, match="torch.Tensor"):
        probe_model(lambda x, t: x.numpy(), x, t)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
USER_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn

    def score(x, t):
        return -x

    def factory():
        return lambda x, t: -2 * x

    def sde_factory(sde):
        return lambda x, t: -x / sde.marginal_var(t)[:, None]

    class Net(nn.Module):
        def forward(self, x, t):
            return -x

    net = Net().double()

    def wrong_shape(x, t):
        return x[:, :1]

    def nan_out(x, t):
        return x * float("nan")

    def wrong_dtype(x, t):
        return x.float()

    def raises(x, t):
        raise RuntimeError("boom inside the model")

    not_callable = 3
    """
)


@pytest.fixture
def user_file(tmp_path):
    p = tmp_path / "usermodels.py"
    p.write_text(USER_MODULE)
    return p


def test_load_forms(user_file, tmp_path, monkeypatch):
    sde = VPSDE()
    x = torch.randn(4, 2, dtype=D64)
    t = torch.full((4,), 0.5, dtype=D64)
    torch.testing.assert_close(load_model(f"{user_file}:score").model(x, t), -x)
    torch.testing.assert_close(load_model(f"{user_file}:factory").model(x, t), -2 * x)
    torch.testing.assert_close(load_model(f"{user_file}:sde_factory", sde).model(x, t),
                               -x / sde.marginal_var(t)[:, None])
    torch.testing.assert_close(load_model(f"{user_file}:net").model(x, t), -x)
    torch.testing.assert_close(load_model(f"{user_file}:Net").model(x.float(), t.float()), -x.float())
    monkeypatch.syspath_prepend(str(user_file.parent))
    torch.testing.assert_close(load_model("usermodels:score").model(x, t), -x)
    # TorchScript file and a run directory holding model.pt
    mod = load_model(f"{user_file}:net").model
    pt = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(mod), str(pt))
    torch.testing.assert_close(load_model(str(pt)).model(x, t), -x)
    run = tmp_path / "run"
    run.mkdir()
    torch.jit.save(torch.jit.script(mod), str(run / "model.pt"))
    torch.testing.assert_close(load_model(str(run)).model(x, t), -x)


@pytest.mark.parametrize(
    "spec,match",
    [
        ("no_such_module_xyz:f", "module 'no_such_module_xyz' not found"),
        ("missing_file.py:f", "'missing_file.py' does not exist"),
        ("{f}:nope", "has no attribute 'nope'"),
        ("{f}:not_callable", "not a score_fn"),
        ("missing.pt", "'missing.pt' does not exist"),
        ("just_a_name", "expected MODULE:ATTR"),
    ],
)
def test_load_errors(user_file, spec, match):
    with pytest.raises(ValueError, match=match):
        load_model(spec.format(f=user_file))


# ---------------------------------------------------------------------------------------------
# CLI: `scorefpe check --model ...`
# ---------------------------------------------------------------------------------------------
def _run(args):
    return CliRunner().invoke(main, ["check", *args], catch_exceptions=False)


@pytest.mark.parametrize(
    "args,match",
    [
        (["--model", "no_such_module_xyz:f", "--data", "gmm2d"], "no_such_module_xyz"),
        (["--model", "{f}:wrong_shape", "--data", "gmm2d"], "wrong shape"),
        (["--model", "{f}:nan_out", "--data", "gmm2d"], "NaN"),
        (["--model", "{f}:wrong_dtype", "--data", "gmm2d"], "wrong dtype"),
        (["--model", "{f}:raises", "--data", "gmm2d"], "boom inside the model"),
        (["--model", "{f}:score", "--data", "gmm2d", "--param", "velocity"], "'velocity'"),
        (["--model", "{f}:score", "--data", "nosuchdata"], "'nosuchdata'"),
        (["--model", "{f}:score", "--data", "gmm2d", "--t-grid", "1:0.1:3"], "t-grid"),
        (["--model", "{f}:score", "--data", "gmm2d", "--sde", "ve", "--beta-min", "0.2"],
         "beta_min"),
        (["--model", "{f}:score"], "--shape"),
        (["--model", "{f}:score", "--data", "gmm2d", "--device", "bogus"], "'bogus'"),
        (["--data", "gmm2d"], "add --model"),
    ],
)
def test_cli_bad_input_exit_2(user_file, tmp_path, args, match):
    out = tmp_path / "out"
    args = [a.format(f=user_file) for a in args]
    if "--t-grid" not in args:
        args += ["--t-grid", "0.1:1:2"]
    res = _run(args + ["--out", str(out), "--n-points", "4"])
    assert res.exit_code == 2, res.output
    assert match in res.output
    assert not out.exists()  # nothing half-written


def test_cli_writes_files_and_rotation_shows_asymmetry(tmp_path):
    nasym = {}
    for name in ("gaussian_score", "rotated_score"):
        out = tmp_path / name
        res = _run(["--model", f"{EXAMPLES / 'check_gaussian.py'}:{name}", "--sde", "vp",
                    "--data", "gmm2d", "--t-grid", "1e-3:1:3", "--n-points", "16",
                    "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert "| t | r_FP" in res.output and "time" in res.output
        assert sorted(p.name for p in out.iterdir()) == [
            "report.csv", "report.json", "report.md", "report.png"]
        js = json.loads((out / "report.json").read_text())
        nasym[name] = [r["nasym"]["mean"] for r in js["rows"]]
        assert js["meta"]["dim"] == 2 and js["meta"]["exact"] is True
    assert max(nasym["gaussian_score"]) < 1e-20  # round-off
    assert min(nasym["rotated_score"]) > 0.05  # 4 lam^2 / (2 ||J||_F^2) with lam = 0.5


def test_cli_eps_param_and_model_samples(tmp_path):
    # No --data: x0 from the model's own probability-flow ODE samples.
    res = _run(["--model", f"{EXAMPLES / 'check_eps_network.py'}:exact_eps_net", "--param", "eps",
                "--shape", "2", "--t-grid", "0.05:1:2", "--n-points", "8"])
    assert res.exit_code == 0, res.output
    assert "model samples" in res.output
    assert "DSM" not in res.output.split("mode:")[1].splitlines()[1]  # no DSM without data


def test_cli_npy_data(tmp_path):
    arr = np.random.default_rng(0).normal(size=(50, 2))
    f = tmp_path / "x.npy"
    np.save(f, arr)
    res = _run(["--model", f"{EXAMPLES / 'check_gaussian.py'}:gaussian_score", "--data", str(f),
                "--t-grid", "0.1:1:2", "--n-points", "6"])
    assert res.exit_code == 0, res.output
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros(5))
    res = _run(["--model", f"{EXAMPLES / 'check_gaussian.py'}:gaussian_score", "--data", str(bad)])
    assert res.exit_code == 2 and "bad.npy" in res.output


def test_model_options_fold_into_host_command(tmp_path):
    import click

    names = set(model_option_names(("sde", "seed")))
    assert "sde" not in names and "seed" not in names and {"model", "param", "data"} <= names

    @click.command()
    @click.option("--sde", "sde_name", default="vp")
    @click.option("--seed", default=0, type=int)
    @add_model_options(skip=("sde", "seed"))
    def host(sde_name, seed, **kw):
        if kw["model"] is None:
            click.echo("battery")
            return
        run_model_check(sde=sde_name, seed=seed, **kw)

    assert CliRunner().invoke(host, []).output == "battery\n"
    res = CliRunner().invoke(host, ["--model", f"{EXAMPLES / 'check_gaussian.py'}:gmm2d_score",
                                    "--data", "gmm2d", "--t-grid", "0.1:1:2", "--n-points", "4"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(host, ["--model", "x.py:f", "--data", "gmm2d"])
    assert res.exit_code == 2 and "'x.py' does not exist" in res.output


def test_time_method_option_rejects_unknown():
    sde = VPSDE()
    with pytest.raises(ValueError, match="'backward_euler'"):
        check_model(g_score(sde), sde, _std_normal(3), t_grid=[0.5], n_points=2,
                    time_method="backward_euler")


# ---------------------------------------------------------------------------------------------
# dtype: check_model's default is the CLI's --dtype auto (the model's parameter dtype).
# ---------------------------------------------------------------------------------------------
class _Float32EpsNet(torch.nn.Module):
    """A small float32 eps-predicting network (untrained: only the dtype handling is tested)."""

    def __init__(self, d: int = 2) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = torch.nn.Linear(d + 1, d)
        with torch.no_grad():
            self.lin.weight.copy_(0.3 * torch.randn(d, d + 1, generator=g))

    def forward(self, x, t):
        return torch.tanh(self.lin(torch.cat([x, t[:, None]], 1)))


def _doc_block(doc: Path, heading: str) -> str:
    text = doc.read_text()
    section = text.split(heading, 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


def test_docs_api_example_runs_on_a_float32_network(tmp_path, monkeypatch, capsys):
    # The "Python API" block of docs/modelcheck.md, executed as written on a float32 eps-net.
    code = _doc_block(Path(__file__).resolve().parents[1] / "docs" / "modelcheck.md", "## Python API")
    monkeypatch.chdir(tmp_path)
    ns = {"my_eps_net": _Float32EpsNet().float(),
          "sample_x0": lambda n, g=None: torch.randn(n, 2, generator=g)}
    exec(compile(code, "docs/modelcheck.md", "exec"), ns)
    rep = ns["report"]
    assert rep.meta["dtype"] == "float32" and rep.meta["dim"] == 2
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "| t | r_FP" in capsys.readouterr().out


def test_check_model_dtype_default_follows_the_model():
    sde = VPSDE()
    net = _Float32EpsNet()
    kw = dict(t_grid=[0.5], n_points=2, generator=torch.Generator().manual_seed(0))
    x0 = _std_normal(2)
    for param in ("eps", "x0", "v", "score"):  # through every to_score_fn wrapper
        assert check_model(to_score_fn(net, sde, param), sde, x0, **kw).meta["dtype"] == "float32"
    assert check_model(g_score(sde), sde, _std_normal(3), **kw).meta["dtype"] == "float64"
    # a module with buffers but no parameters: the buffers' dtype
    assert check_model(_RotNet(dtype=torch.float32), sde, x0, **kw).meta["dtype"] == "float32"
    assert check_model(to_score_fn(net.double(), sde, "eps"), sde, x0, **kw).meta["dtype"] == "float64"
    # an explicit dtype still wins, and a mismatch is named
    with pytest.raises(ValueError, match="parameters are torch.float32: evaluate in that dtype"):
        check_model(to_score_fn(_Float32EpsNet(), sde, "eps"), sde, x0, dtype=torch.float64, **kw)


# ---------------------------------------------------------------------------------------------
# torch.export programs (.pt2), and files that are neither a program nor TorchScript.
# ---------------------------------------------------------------------------------------------
LAM = 0.5


class _RotNet(torch.nn.Module):
    """s = (1 + t) (-I + lam R) x: ||J - J^T||_F^2 / 2 = 4 lam^2 (1 + t)^2 exactly."""

    def __init__(self, dtype=D64, out_dtype=None) -> None:
        super().__init__()
        self.register_buffer("a", torch.tensor([[-1.0, -LAM], [LAM, -1.0]], dtype=dtype))
        self.out_dtype = out_dtype

    def forward(self, x, t):
        s = (x @ self.a.T) * (1 + t[:, None])
        return s if self.out_dtype is None else s.to(self.out_dtype)


def _export(module, path, dynamic=True):
    x = torch.randn(4, 2, dtype=module.a.dtype)
    t = torch.rand(4, dtype=module.a.dtype)
    b = torch.export.Dim("batch")
    ds = {"x": {0: b}, "t": {0: b}} if dynamic else None
    torch.export.save(torch.export.export(module.eval(), (x, t), dynamic_shapes=ds), str(path))
    return path


def test_exported_program_checks_like_the_module(tmp_path):
    sde = VPSDE()
    pt2 = _export(_RotNet(), tmp_path / "rot.pt2")
    loaded = load_model(str(pt2))
    kw = dict(t_grid=[0.1, 1.0], n_points=6, true_score_fn=None)
    rep = check_model(loaded.model, sde, _std_normal(2), generator=torch.Generator().manual_seed(3), **kw)
    ref = check_model(_RotNet(), sde, _std_normal(2), generator=torch.Generator().manual_seed(3), **kw)
    for i, t in enumerate(rep.t):
        assert rep.stats["asym"][i].mean == pytest.approx(4 * LAM**2 * (1 + t) ** 2, rel=1e-12)
        for q in rep.quantities:  # same probe call, same points: the same numbers
            assert rep.stats[q][i].mean == pytest.approx(ref.stats[q][i].mean, rel=1e-12, abs=1e-300)
    # the same file under a .pt name, and in a run directory, is recognised by its contents
    (tmp_path / "renamed.pt").write_bytes(pt2.read_bytes())
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt2").write_bytes(pt2.read_bytes())
    x, t = torch.randn(3, 2, dtype=D64), torch.rand(3, dtype=D64)
    for spec in (tmp_path / "renamed.pt", run):
        torch.testing.assert_close(load_model(str(spec)).model(x, t), _RotNet()(x, t))


def test_cli_checks_an_exported_program(tmp_path):
    pt2 = _export(_RotNet(), tmp_path / "rot.pt2")
    out = tmp_path / "out"
    res = _run(["--model", str(pt2), "--sde", "vp", "--data", "gmm2d", "--t-grid", "0.1:1:2",
                "--n-points", "8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    js = json.loads((out / "report.json").read_text())
    for row in js["rows"]:
        assert row["asym"]["mean"] == pytest.approx(4 * LAM**2 * (1 + row["t"]) ** 2, rel=1e-12)


@pytest.mark.parametrize(
    "name,make,match",
    [
        ("m.pt2", lambda p: _export(_RotNet(), p, dynamic=False), "fixed batch size 4"),
        ("m.pt2", lambda p: _export(_RotNet(out_dtype=torch.float32), p), "wrong dtype"),  # probe
        ("m.pt", lambda p: torch.save(_RotNet().state_dict(), p), "holding a state_dict (1 entries: a)"),
        ("m.pth", lambda p: torch.save({"model": _RotNet().state_dict(), "step": 3}, p),
         "a checkpoint dict"),
        ("m.pt", lambda p: torch.save(_RotNet(), p), "a pickled object"),
        ("m.pt2", lambda p: p.write_bytes(b"not a zip archive"), "not a PyTorch archive"),
    ],
    ids=["static-batch", "wrong-dtype", "state-dict", "checkpoint", "pickled-module", "garbage"],
)
def test_cli_refuses_unusable_model_files(tmp_path, name, make, match):
    f = tmp_path / name
    make(f)
    out = tmp_path / "out"
    res = _run(["--model", str(f), "--data", "gmm2d", "--t-grid", "0.1:1:2", "--n-points", "4",
                "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert match in res.output and "Traceback" not in res.output
    if match != "wrong dtype":  # a load error names the file; a probe error names the check
        assert str(f) in res.output
    if "state_dict" in match or "checkpoint" in match:
        assert "file.py:factory" in res.output
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# check --model with --json / --plot (issue 18: every option honoured or refused)
# ---------------------------------------------------------------------------------------------
def test_cli_model_json_and_plot_are_written(tmp_path):
    rot = f"{EXAMPLES / 'check_gaussian.py'}:rotated_score"
    common = ["--model", rot, "--sde", "vp", "--data", "gmm2d", "--t-grid", "1e-3:1:3",
              "--n-points", "8"]
    js, png, out = tmp_path / "sub" / "r.json", tmp_path / "r.png", tmp_path / "out"
    res = _run([*common, "--json", str(js), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert f"wrote {js}" in res.output and f"wrote {png}" in res.output
    got = json.loads(js.read_text())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same report as --out's report.json (same seed): rows identical, Asym = 4 lam^2 = 1
    assert _run([*common, "--out", str(out)]).exit_code == 0
    ref = json.loads((out / "report.json").read_text())
    assert got["rows"] == ref["rows"] and len(got["rows"]) == 3
    assert all(r["asym"]["mean"] == pytest.approx(1.0, rel=1e-12) for r in got["rows"])


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--dataset", "gmm8"], "--dataset applies only to the battery"),
        (["--t-min", "0.01", "--no-symbolic"], "--t-min, --no-symbolic apply only to the battery"),
        (["--plot", "{tmp}/r.svg"], "must end in .png"),
        (["--json", "{tmp}/afile/r.json"], "is a file, not a directory"),
        (["--plot", "{tmp}/afile/r.png"], "is a file, not a directory"),
    ],
)
def test_cli_model_refuses_options_it_cannot_honour(tmp_path, extra, match):
    (tmp_path / "afile").write_text("a regular file")
    extra = [a.format(tmp=tmp_path) for a in extra]
    res = _run(["--model", f"{EXAMPLES / 'check_gaussian.py'}:gaussian_score", "--data", "gmm2d",
                "--t-grid", "0.1:1:2", "--n-points", "4", *extra])
    assert res.exit_code == 2, res.output
    assert match in res.output and "points per t" not in res.output  # refused before any work
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_cli_battery_json_under_a_file_exit_2(tmp_path):
    (tmp_path / "afile").write_text("x")
    res = _run(["--json", str(tmp_path / "afile" / "c.json")])
    assert res.exit_code == 2 and "is a file, not a directory" in res.output
    assert "scorefpe check:" not in res.output  # before the battery ran


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_cli_param_v_and_epsilon(tmp_path, sde_name):
    # Exact v- and eps-predictors of gmm2d (closed-form score turned into each output): with the
    # right --param the distance to the true score is round-off; read as another param it is not.
    f = tmp_path / "vmodels.py"
    f.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(EXAMPLES)!r})
        from check_gaussian import gmm2d_score
        from scorefpe.modelcheck import score_to_output

        def v_net(sde):
            return score_to_output(gmm2d_score(sde), sde, "v")

        def eps_net(sde):
            return score_to_output(gmm2d_score(sde), sde, "eps")
        """))
    dist = {}
    for attr, param in (("v_net", "v"), ("eps_net", "epsilon"), ("v_net", "eps")):
        out = tmp_path / f"{attr}_{param}.json"
        res = _run(["--model", f"{f}:{attr}", "--param", param, "--sde", sde_name, "--data",
                    "gmm2d", "--t-grid", "0.05:1:2", "--n-points", "4", "--json", str(out)])
        assert res.exit_code == 0, res.output
        js = json.loads(out.read_text())
        dist[(attr, param)] = max(r["true_dist"]["mean"] for r in js["rows"])
    for key in (("v_net", "v"), ("eps_net", "epsilon")):
        assert dist[key] < 1e-20, (key, dist[key])
    assert dist[("v_net", "eps")] > 1e-3


def test_default_time_derivative_is_exact_where_the_stencil_is_biased():
    # Data N(0, c^2 I) with c = 1e-2 under VP: the true score -x / v(t), v = a(t)^2 c^2 + sigma(t)^2,
    # has r_FP = 0 at every t. At the grid's lowest t = 1e-3, v grows from ~2e-4 to ~5e-4 over the
    # stencil's one-sided reach (t + h, t + 2h, h = 1e-3), so a stencil's d_t s is biased by
    # O(h^2 d_t^3 s) ~ |s| there: its r_FP CI excludes 0, while the default (forward-mode) stays
    # at float64 round-off. A default that fell back to the stencil fails the first assertion.
    sde = VPSDE()
    c = 1e-2
    d = 32

    def true_score(x, t):
        v = sde.mean_coeff(t) ** 2 * c**2 + sde.marginal_var(t)
        return -x / v[:, None]

    def x0(n, g=None):
        return c * torch.randn(n, d, generator=g, dtype=D64)

    kw = dict(t_grid=[1e-3], n_points=64, n_probes=4, mode="estimated", compute_dsm=False)
    rep = check_model(true_score, sde, x0, generator=torch.Generator().manual_seed(3), **kw)
    assert "forward-mode" in rep.meta["mode"]
    s = rep.stats["r_fp"][0]
    # The score is linear and isotropic, so Hutchinson is exact here (grad_x div s = 0) and r_FP
    # is float64 round-off: eps ~ 64 machine epsilons of |d_t s|, |d_t s|^2/D ~ E|s|^2/D / t^2.
    roundoff = (64 * torch.finfo(D64).eps) ** 2 * rep.stats["score_sq"][0].mean / 1e-3**2
    assert abs(s.mean) <= roundoff
    bad = check_model(true_score, sde, x0, generator=torch.Generator().manual_seed(3),
                      time_method="nonuniform", **kw)
    b = bad.stats["r_fp"][0]
    assert b.mean > 4 * b.se
    assert b.mean > 1e6 * roundoff
