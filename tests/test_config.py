from pathlib import Path

import pytest

from protgo.config import Config, ConfigError, load_config

CONFIGS = Path(__file__).parent.parent / "configs"


def test_defaults_carry_seed_values():
    cfg = Config()
    assert cfg.curriculum.schedule == "cosine"
    assert cfg.curriculum.warmup_epochs == 1.0
    assert cfg.curriculum.hard_frac == (0.2, 0.8)
    assert cfg.curriculum.k_hard == (16, 64)
    assert (cfg.loss.lambda_con, cfg.loss.lambda_attr, cfg.loss.lambda_ent) == (1.0, 0.1, 0.01)
    assert (cfg.loss.tau, cfg.loss.lambda_vtrue) == (1.5, 0.2)


@pytest.mark.parametrize("name", ["default.yaml", "tiny.yaml", "demo.yaml"])
def test_shipped_configs_load(name):
    load_config(CONFIGS / name)


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"exp.yaml[\s\S]*train.lrr"):
        load_config(p)


def test_wrong_type_names_key(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(p)


def test_overrides(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("train:\n  epochs: 3\n")
    cfg = load_config(p, ["train.epochs=5", "curriculum.k_hard=[8, 32]", "data.aspects=[MF]"])
    assert cfg.train.epochs == 5
    assert cfg.curriculum.k_hard == (8, 32)
    assert cfg.data.aspects == ["MF"]
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(p, ["epochs"])
    with pytest.raises(ConfigError, match="model.nope"):
        load_config(p, ["model.nope=1"])
