from pathlib import Path

import pytest

from protgo.config import Config, ConfigError, load_config

CONFIGS = Path(__file__).parent.parent / "src" / "protgo" / "configs"


def test_default_yaml_lists_every_key_with_the_code_default():
    import yaml

    listed = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    assert listed == yaml.safe_load(yaml.safe_dump(Config().model_dump(mode="json")))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    """Each config the package ships loads as its kind: PLM pretraining or the aligner."""
    from protgo.config import load_model
    from protgo.plm.config import PlmConfig

    if path.name.startswith("plm-"):
        load_model(PlmConfig, path)
    else:
        load_config(path)


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


def test_a_bad_set_value_is_named_as_the_option_not_the_file():
    with pytest.raises(ConfigError, match="from --set train.epochs=abc") as err:
        load_config(CONFIGS / "demo.yaml", ["train.epochs=abc"])
    assert "demo.yaml" not in str(err.value)
