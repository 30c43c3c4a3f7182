import json

import pytest
from click.testing import CliRunner

from cli.main import main


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
    ],
)
def test_check_bad_input_exits_2(tmp_path, args, needle):
    res = CliRunner().invoke(main, ["check", *args])
    assert res.exit_code == 2
    assert needle in res.output
