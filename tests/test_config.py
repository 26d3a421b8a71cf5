import os

import pytest

from adq_ray.cli import build_config, parser
from adq_ray.config import Config, ConfigError


def test_defaults_follow_the_spec():
    c = Config(input="in", output="out")
    assert (c.num_bins, c.alpha, c.mask_ratio, c.patch_size) == (10, 0.7, 0.2, 16)
    assert (c.grid, c.kept_patches) == (14, 156)
    assert c.cache_uri == os.path.abspath("out") + "/_stages"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rho": 0.0}, "rho must be in (0, 1]"),
        ({"rho": 1.5}, "rho must be in (0, 1]"),
        ({"rho": float("nan")}, "rho must be a finite number"),
        ({"alpha": -0.1}, "alpha must be in [0, 1]"),
        ({"mask_ratio": 1.0}, "mask_ratio must be in [0, 1)"),
        ({"num_bins": 0}, "num_bins must be >= 1"),
        ({"num_bins": 2.5}, "num_bins must be an integer"),
        ({"sampler": "greedy"}, "sampler must be one of"),
        ({"codec": "webp"}, "codec must be one of"),
        ({"patch_image_size": 100}, "multiple of patch_size"),
        ({"labeled": "yes"}, "labeled must be true or false"),
        ({"max_group": 5}, "max_group must be >= num_bins"),
        ({"input": ""}, "input must be"),
    ],
)
def test_bad_values_are_rejected_by_name(change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        Config(**{"input": "in", "output": "out", **change})


def test_local_paths_become_absolute_urls_and_keywords_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = Config(
        input="data",
        output="s3://bucket/out",
        backbone_weights="w.pth",
        cam_weights="hub",
        contrastive_weights="random",
    )
    assert c.input == str(tmp_path / "data") and c.output == "s3://bucket/out"
    assert c.backbone_weights == str(tmp_path / "w.pth") and (c.cam_weights, c.contrastive_weights) == ("hub", "random")


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match="unknown config key.*rhoo"):
        Config.from_dict({"input": "a", "output": "b", "rhoo": 0.1})


def test_cli_flags_override_file(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("input: a\noutput: b\nrho: 0.3\nalpha: 0.1\n")
    args = parser().parse_args(["compress", "--config", str(f), "--rho", "0.2", "--no-labeled", "--sampler", "dq"])
    c = build_config(args)
    assert (c.rho, c.alpha, c.labeled, c.sampler) == (0.2, 0.1, False, "dq")


def test_cli_reports_bad_value_as_one_line(capsys):
    from adq_ray.cli import main

    assert main(["compress", "--input", "a", "--output", "b", "--rho", "2"]) == 2
    assert "rho must be in (0, 1]" in capsys.readouterr().err
    assert main(["compress", "--output", "b"]) == 2
    assert "missing required config: --input" in capsys.readouterr().err


# Fields that change no output, so they join no stage fingerprint; each with the reason why.
EXEMPT = {
    "output": "a location: the products go there, the stage cache keys on what is computed, not where it lands",
    "cache": "a location: sharing a cache between outputs is the point of the fingerprints",
    "batch_size": "a throughput knob: every per-row result is independent of how rows are batched",
    "num_actors": "a throughput knob: the pool size changes scheduling, not results",
    "cpus_per_actor": "a throughput knob: a CPU share changes scheduling, not results",
    "storage_attempts": "reliability: retries change whether a request succeeds, never what it returns",
    "connect_timeout": "reliability: a timeout changes when a request fails, never what it returns",
    "request_timeout": "reliability: a timeout changes when a request fails, never what it returns",
    "stall_seconds": "reliability: the stall limit changes when a stage fails, never what it writes",
}


def test_every_field_joins_a_stage_or_is_exempt_with_a_reason():
    from adq_ray.config import field_help, field_stage, field_types
    from adq_ray.layout import STAGE_FIELDS, STAGES

    unkeyed = {name for name in field_types() if field_stage(name) is None}
    assert unkeyed == set(EXEMPT), "a field with stage None needs a reason in EXEMPT (or a stage in config.option)"
    keyed = {name for fields in STAGE_FIELDS.values() for name in fields}
    assert keyed | unkeyed == set(field_types()) and not keyed & unkeyed
    assert all(field_stage(name) in STAGES for name in keyed)
    assert all(field_help(name) for name in field_types()), "every field needs a help line"


def test_sample_writes_beside_the_run_it_resamples_and_refuses_to_overwrite_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text("input: data\noutput: outputs/r10\nrho: 0.1\n")
    sample = lambda *flags: build_config(parser().parse_args(["sample", "--config", "run.yaml", *flags]))  # noqa: E731
    c = sample("--rho", "0.05", "--alpha", "0.5")
    assert c.output == str(tmp_path / "outputs" / "r10-adq-rho0.05-alpha0.5")
    assert c.cache_uri == str(tmp_path / "outputs" / "r10" / "_stages")  # the earlier run's embeddings and bins
    assert sample("--output", "elsewhere").output == str(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="would overwrite outputs/r10/, the run it re-samples from"):
        sample("--rho", "0.05", "--output", "outputs/r10/")
    assert sample("--rho", "0.05", "--output", "outputs/r10", "--overwrite").output == str(tmp_path / "outputs" / "r10")


def test_every_flag_of_every_command_has_a_help_line_with_its_default():
    import argparse

    subparsers = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command, sub in subparsers.choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            flag = f"adq {command} {action.option_strings[-1]}"
            assert action.help, f"{flag} has no help line"
            if action.default not in (None, False, "") and action.required is False:
                shown = "default" in action.help or str(action.default) in action.help
                assert shown, f"{flag} does not show its default {action.default!r}"
