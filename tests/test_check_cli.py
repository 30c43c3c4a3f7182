import json

import pytest
from click.testing import CliRunner

from scorefpe.cli.main import main


@pytest.mark.parametrize("sde", ["vp", "ve"])
def test_check_gmm2d_passes_and_writes_files(tmp_path, sde):
    js, png = tmp_path / "c.json", tmp_path / "c.png"
    res = CliRunner().invoke(main, ["check", "--dataset", "gmm2d", "--sde", sde, "--json", str(js), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert "FAIL" not in res.output and "PASS" in res.output
    data = json.loads(js.read_text())
    assert data["passed"] and len(data["checks"]) >= 15
    assert png.stat().st_size > 10000


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--dataset", "gmm9"], "gmm9"),
        (["--sde", "xx"], "xx"),
        (["--t-min", "2"], "2"),
        (["--plot", "out.pdf"], "out.pdf"),
        # Model-only options without --model are refused, not ignored.
        (["--device", "bogus"], "--device 'bogus'"),
        (["--n-points", "5", "--dtype", "float32"], "--n-points 5, --dtype 'float32'"),
        (["--out", "rep"], "add --model"),
        # The SDE parameters set the battery's SDE, validated by it.
        (["--sde", "ve", "--sigma-min", "0", "--sigma-max", "-2"], "sigma_max=-2"),
        (["--sde", "vp", "--beta-min", "5", "--beta-max", "1"], "beta_min=5"),
        (["--sigma-min", "0.1"], "sigma_min"),
    ],
)
def test_check_bad_input_exits_2(tmp_path, args, needle):
    res = CliRunner().invoke(main, ["check", *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output


def test_check_sde_parameters_reach_the_battery(tmp_path):
    js = tmp_path / "c.json"
    res = CliRunner().invoke(main, ["check", "--sde", "ve", "--sigma-max", "20", "--no-symbolic",
                                    "--json", str(js)])
    assert res.exit_code == 0, res.output
    data = json.loads(js.read_text())
    assert data["passed"] and data["sde_params"] == (
        "VESDE(sigma_min=0.01, sigma_max=20.0, T=1.0, variance=<VEVariance.EXACT: 'exact'>)")
