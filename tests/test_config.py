"""Config validation: every bad field is one line naming the field, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from clinvert.config import ConfigError, RunConfig, apply_overrides, load_config, parse_yaml

ROOT = Path(__file__).resolve().parents[1]


def error_for(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_are_the_paper_setting() -> None:
    cfg = load_config()
    assert cfg.latent.dim == 10 and cfg.latent.space == "sphere"
    assert cfg.train.batch_size == 6144 and cfg.train.steps == 300_000 and cfg.train.lr == 1e-4
    assert cfg.model.widths == [10, 50, 50, 50, 50, 10]


@pytest.mark.parametrize(
    "overrides,field,allowed",
    [
        (["latent.conditional.kappa=-1"], "latent.conditional.kappa", "greater than 0"),
        (["latent.conditional.kappa=0"], "latent.conditional.kappa", "greater than 0"),
        (["latent.space=box"], "latent.conditional.name", "normal, laplace, gennorm"),
        (["latent.space=cube"], "latent.space", "allowed: sphere, box, unbounded"),
        (["latent.marginal.name=cauchy"], "latent.marginal.name", "allowed: uniform, normal"),
        (["latent.conditional.name=vonmises"], "latent.conditional.name", "allowed: vmf"),
        (["model.encoder=vit"], "model.encoder", "allowed: mlp, resnet18, conv"),
        (["model.similarity=dot"], "model.similarity", "allowed: cosine, lp"),
        (["data.source=hdf5"], "data.source", "allowed: synthetic, arrays, threedident"),
        (["data={source: arrays, max_delta_t: 0}"], "data.max_delta_t", "greater than or equal"),
        (
            ["latent.space=unbounded", "latent.conditional={name: normal, scale: 1}"],
            "latent.marginal.name",
            "bounded space",
        ),
        (["latent.dim=ten"], "latent.dim", "valid integer"),
        (["latent.dim=10.5"], "latent.dim", "valid integer"),
        (["train.lr=fast"], "train.lr", "valid number"),
        (["train.lr=.nan"], "train.lr", "finite"),
        (["train.batch_size=1"], "train.batch_size", "greater than or equal to 2"),
        (["model.learnable_scale=maybe"], "model.learnable_scale", "valid boolean"),
        (["model.p=0.5"], "model.p", "greater than or equal to 1"),
        (["model.output=box"], "model.similarity", "use similarity lp"),
        (["latent.box=[1, 0]"], "latent.box", "low < high"),
        (["latent.tpyo=1"], "latent.tpyo", "unknown key"),
        (["latent.conditional={kappa: 1}"], "latent.conditional", "'name'"),
        (["latent.conditional={name: gennorm, scale: 0.1}"], "latent.conditional.beta", "missing"),
        (["train.device=tpu"], "train.device", "'auto', 'cpu' or 'cuda'"),
        (
            ["latent.space=box", "latent.conditional={name: normal, scale: [0.1, 0.2]}"],
            "latent.conditional.scale",
            "one number or one per latent (10 numbers), got 2",
        ),
        (
            ["latent.space=box", "latent.conditional={name: laplace, scale: [0.1, -0.2]}"],
            "latent.conditional.scale",
            "a list of numbers > 0 (one per latent), got [0.1, -0.2]",
        ),
        (
            ["latent.space=box", "latent.conditional={name: normal, scale: 0}"],
            "latent.conditional.scale",
            "must be a number > 0",
        ),
    ],
)
def test_invalid_fields_fail_with_one_line_naming_field_and_allowed(
    overrides, field, allowed
) -> None:
    message = error_for(overrides)
    assert message.startswith(field), message
    assert allowed in message, message


def test_error_names_the_value() -> None:
    assert "got -1" in error_for(["latent.conditional.kappa=-1"])
    assert "got 'cube'" in error_for(["latent.space=cube"])
    assert "space=box" in error_for(["latent.space=box"])


def test_yaml_reads_exponents_without_a_dot_as_floats() -> None:
    assert parse_yaml("lr: 1e-4") == {"lr": 1e-4}
    assert load_config(None, ["train.lr=3e-4"]).train.lr == 3e-4


def test_overrides_fill_missing_sections_from_defaults() -> None:
    data = apply_overrides({}, ["latent.conditional.kappa=10"])
    assert data["latent"]["conditional"] == {"name": "vmf", "kappa": 10}
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides({}, ["latent.dim"])


def test_config_round_trips_through_yaml(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "latent.space=box",
            "latent.conditional={name: laplace, scale: 0.1}",
            "model.output=box",
            "model.similarity=lp",
            "model.p=1",
        ],
    )
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_self_negative_appears_in_the_resolved_config_only_when_on(tmp_path: Path) -> None:
    from clinvert.config import describe_model

    off = load_config(None, [])
    assert "self_negative" not in off.to_dict()["model"]  # old run directories stay resumable
    on = load_config(None, ["model.self_negative=true"])
    assert on.to_dict()["model"]["self_negative"] is True
    assert describe_model(on).endswith(", self-negative")
    path = tmp_path / "c.yaml"
    path.write_text(on.to_yaml())
    assert load_config(path) == on
    assert "model.self_negative" in error_for(["model.self_negative=maybe"])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("latent: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


def test_a_key_given_twice_is_refused_in_one_line_naming_it(tmp_path: Path) -> None:
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  lr: 1.0e-3\n  steps: 10\n  lr: 2.0e-3\n")
    with pytest.raises(ConfigError) as info:
        load_config(twice)
    message = str(info.value)
    assert "\n" not in message
    assert "line 4: key 'lr' is given twice (first at line 2)" in message, message
    # two identical copies of a whole profile are refused too (the case that passed unnoticed)
    profile = "profiles:\n  wide:\n    train: {lr: 2.0e-3}\n"
    twice.write_text(profile + "  wide:\n    train: {lr: 2.0e-3}\n")
    with pytest.raises(ConfigError, match="key 'wide' is given twice"):
        load_config(twice, profile="wide")
    with pytest.raises(ConfigError, match=r"--set train: key 'lr' is given twice"):
        load_config(None, ["train={lr: 1, lr: 2}"])
    # a merge key is not a duplicate, and an explicit key still overrides what it merged
    merged = parse_yaml("base: &b {lr: 1, steps: 2}\nrun: {<<: *b, lr: 3}\n")
    assert merged["run"] == {"lr": 3, "steps": 2}


def test_shipped_configs_are_valid() -> None:
    paths = sorted((ROOT / "configs").rglob("*.yaml")) + [ROOT / "src/clinvert/defaults/demo.yaml"]
    assert len(paths) >= 3
    for path in paths:
        assert isinstance(load_config(path), RunConfig), path


def test_claims_are_validated_and_checked() -> None:
    from clinvert.config import ConfigError, validate_config

    cfg = validate_config(
        {"claims": [{"metric": "r2", "at_least": 0.95}, {"metric": "mcc", "at_most": 0.8}]}
    )
    low, high = cfg.claims
    assert low.holds(0.96) and not low.holds(0.9) and low.holds(None) is None
    assert high.holds(0.5) and not high.holds(0.85)
    assert low.describe() == "R² ≥ 0.95" and high.describe() == "MCC ≤ 0.8"
    with pytest.raises(ConfigError, match=r"claims\.0\.at_least"):
        validate_config({"claims": [{"metric": "r2", "at_least": 1.5}]})


def test_a_per_latent_scale_is_kept_and_labelled() -> None:
    from clinvert.config import describe_process

    scales = [0.5] * 3 + [0.1] * 3 + [0.5] * 4
    cfg = load_config(
        None, ["latent.space=box", f"latent.conditional={{name: normal, scale: {scales}}}"]
    )
    assert cfg.latent.conditional.scale == scales
    assert (
        describe_process(cfg)
        == f"box / Uniform / Normal(σ=[{', '.join(f'{v:g}' for v in scales)}])"
    )
    assert (
        load_config(
            None, ["latent.space=box", "latent.conditional={name: normal, scale: 1}"]
        ).latent.conditional.scale
        == 1.0
    )
