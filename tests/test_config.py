"""Config: frozen dataclasses, validation naming the field, TOML round trip, overrides."""

from __future__ import annotations

import dataclasses

import pytest

from groklab.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_hash,
    config_to_dict,
    load_config,
    save_config,
)
from groklab.errors import ConfigError
from groklab.presets import PRESETS, get_preset


def test_configs_are_frozen() -> None:
    cfg = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "x"  # type: ignore[misc]


def test_defaults_are_the_nanda2023_run() -> None:
    cfg = get_preset("nanda2023")
    assert cfg.data.p == 113 and cfg.data.operations == ("add",)
    assert cfg.data.train_fraction == 0.3
    assert (cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads) == (1, 128, 4)
    assert (cfg.model.d_head, cfg.model.d_mlp, cfg.model.act) == (32, 512, "relu")
    assert not cfg.model.layernorm
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 1e-3, 1.0)
    assert cfg.optim.betas == (0.9, 0.98)
    assert cfg.train.batch_size is None and cfg.train.steps == 40_000


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_toml_round_trip_of_every_preset(name: str, tmp_path) -> None:
    cfg = get_preset(name)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    path = tmp_path / "config.toml"
    path.write_text(save_config(cfg))
    assert load_config(path) == cfg


def test_round_trip_keeps_optional_and_tuple_fields(tmp_path) -> None:
    cfg = RunConfig(
        data=DataConfig(operations=("add", "mul"), shares=(0.25, 0.75), train_size=500),
        train=TrainConfig(batch_size=64, stop_test_acc=0.99, stop_patience=10),
    )
    path = tmp_path / "c.toml"
    path.write_text(save_config(cfg))
    back = load_config(path)
    assert back == cfg
    assert back.data.shares == (0.25, 0.75) and isinstance(back.data.operations, tuple)


def test_overrides_parse_and_coerce_types() -> None:
    cfg = apply_overrides(
        RunConfig(),
        [
            "optim.lr=3e-4",
            "data.p=97",
            "data.operations=add,mul",
            "data.shares=[0.5, 0.5]",
            "model.layernorm=true",
            "train.batch_size=512",
            "optim.betas=[0.9, 0.99]",
            "model.init_scale=2",
            "name=other",
        ],
    )
    assert cfg.optim.lr == 3e-4
    assert cfg.data.p == 97 and isinstance(cfg.data.p, int)
    assert cfg.data.operations == ("add", "mul")
    assert cfg.data.shares == (0.5, 0.5)
    assert cfg.model.layernorm is True
    assert cfg.train.batch_size == 512
    assert cfg.optim.betas == (0.9, 0.99)
    assert cfg.model.init_scale == 2.0 and isinstance(cfg.model.init_scale, float)
    assert cfg.name == "other"
    # Overriding back to None.
    assert apply_overrides(cfg, ["train.batch_size=none"]).train.batch_size is None


def test_overrides_do_not_mutate_the_input() -> None:
    cfg = RunConfig()
    new = apply_overrides(cfg, ["optim.lr=0.5"])
    assert cfg.optim.lr == 1e-3 and new.optim.lr == 0.5


def test_config_hash_is_stable_and_tracks_changes() -> None:
    a, b = RunConfig(), RunConfig()
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(apply_overrides(a, ["train.seed=1"]))


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("optim.lr=-1", "optim.lr"),
        ("optim.lr=0", "optim.lr"),
        ("optim.lr=nan", "optim.lr"),
        ("data.train_fraction=0", "data.train_fraction"),
        ("data.train_fraction=1.5", "data.train_fraction"),
        ("data.task=images", "data.task"),
        ("data.operations=pow", "data.operations"),
        ("data.operations=[]", "data.operations"),
        ("data.p=1", "data.p"),
        ("data.p=2.5", "data.p"),
        ("data.train_size=0", "data.train_size"),
        ("data.split=paper", "data.split"),
        ("model.arch=rnn", "model.arch"),
        ("model.act=tanh", "model.act"),
        ("model.d_model=0", "model.d_model"),
        ("model.init_scale=-1", "model.init_scale"),
        ("model.init_scale=inf", "model.init_scale"),
        ("model.layernorm=maybe", "model.layernorm"),
        ("optim.name=lion", "optim.name"),
        ("optim.grokfast=fast", "optim.grokfast"),
        ("train.steps=0", "train.steps"),
        ("train.loss=hinge", "train.loss"),
        ("train.loss_dtype=float16", "train.loss_dtype"),
        ("train.device=tpu", "train.device"),
        ("train.stop_test_acc=1.5", "train.stop_test_acc"),
        ("optim.nope=1", "optim.nope"),
        ("nope.lr=1", "nope.lr"),
        ("lr=1", "lr"),
    ],
)
def test_bad_values_raise_one_line_naming_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), [override])
    msg = str(info.value)
    assert field in msg
    assert "\n" not in msg


@pytest.mark.parametrize("ops", [("mul",), ("div",), ("add", "div")])
def test_non_prime_modulus_rejected_for_field_operations(ops: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match=r"data\.p=12 is not prime"):
        DataConfig(p=12, operations=ops)
    # add/sub/quad need no inverse: any modulus is fine.
    DataConfig(p=12, operations=("add", "sub", "quad"))


def test_shares_must_match_operations_and_sum_to_one() -> None:
    with pytest.raises(ConfigError, match=r"data\.shares"):
        DataConfig(operations=("add", "mul"), shares=(1.0,))
    with pytest.raises(ConfigError, match=r"data\.shares"):
        DataConfig(operations=("add", "mul"), shares=(0.5, 0.6))


def test_malformed_override_and_unknown_section_key() -> None:
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        apply_overrides(RunConfig(), ["optim.lr"])
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict({"train": {"stepz": 3}})
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict({"extra": {}})


def test_load_config_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = not = toml")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_config(tmp_path / "missing.toml")


def test_sections_are_typed() -> None:
    with pytest.raises(ConfigError, match="data must be a DataConfig"):
        RunConfig(data=ModelConfig())  # type: ignore[arg-type]
    assert isinstance(RunConfig().optim, OptimConfig)
