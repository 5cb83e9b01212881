import subprocess
import sys

from test_build import _family_data


def _protgo(*args, env=None):
    cmd = [sys.executable, "-c", "from protgo.cli import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def test_data_build_own_data(tmp_path, tiny_obo):
    fasta, ann = _family_data(tmp_path)
    out = _protgo(
        "data", "build", "--name", "mine", "--fasta", str(fasta), "--annotations", str(ann),
        "--obo", str(tiny_obo), "--split", "random", "--data-dir", str(tmp_path / "d"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "d/datasets/mine/dataset.json").is_file()


def test_user_errors_are_one_line(tmp_path):
    out = _protgo("data", "build", "--name", "human-exp", "--data-dir", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "protgo data fetch" in out.stderr
    assert "Traceback" not in out.stderr
    out = _protgo("data", "build", "--aspects", "XX", "--data-dir", str(tmp_path))
    assert out.returncode == 2 and "--aspects" in out.stderr


def test_shipped_config_by_name_from_another_folder(tmp_path):
    """`-c demo` finds the config inside the package, whatever the working directory."""
    cmd = [sys.executable, "-m", "protgo", "curriculum", "show", "-c", "demo",
           "--steps-per-epoch", "10", "--png", str(tmp_path / "c.png")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "hard_frac" in out.stdout and (tmp_path / "c.png").is_file()
    bad = subprocess.run([*cmd[:6], "nope"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "demo" in bad.stderr and "nope" in bad.stderr


def test_version():
    from protgo import __version__

    out = _protgo("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"protgo {__version__}"
