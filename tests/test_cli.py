"""The command line: every sub-command teaches its settings; config files and flags combine."""

import json

import pytest

from adabert import config as cfgmod
from adabert.cli import build_parser, main

STAGES = {
    ("teacher", "finetune"): cfgmod.FinetuneConfig,
    ("teacher", "probe"): cfgmod.ProbeConfig,
    ("search",): cfgmod.SearchConfig,
    ("train",): cfgmod.TrainConfig,
    ("evaluate",): cfgmod.EvalConfig,
    ("compress",): cfgmod.CompressConfig,
}


@pytest.mark.parametrize("command", list(STAGES), ids=" ".join)
def test_every_stage_help_lists_every_setting_with_its_default(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for field in cfgmod.dataclasses.fields(STAGES[command]):
        assert "--" + field.name.replace("_", "-") in text
    assert "(default:" in text and "--config FILE" in text


def test_search_help_groups_name_real_settings_once_each_in_order(capsys):
    names = {f.name for f in cfgmod.dataclasses.fields(cfgmod.SearchConfig)}
    grouped = [n for group in cfgmod.SearchConfig.HELP_GROUPS.values() for n in group]
    assert len(grouped) == len(set(grouped)) and set(grouped) <= names
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = capsys.readouterr().out
    starts = [text.index(f"\n{group}:\n") for group in cfgmod.SearchConfig.HELP_GROUPS]
    assert starts == sorted(starts)  # the sections in the order a search uses them
    listed = {flag: text.index(f"\n  --{flag} ") for flag in ("train-limit", "arch-gradient", "select")}
    assert starts[0] < listed["train-limit"] < starts[1]  # each setting sits under its section
    assert starts[4] < listed["arch-gradient"] < starts[5] and starts[6] < listed["select"]


def test_top_level_help_shows_the_pipeline(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("teacher", "search", "train", "evaluate", "export", "genotype", "spaces"):
        assert command in text


def test_config_file_and_flags_combine(tmp_path):
    path = tmp_path / "search.json"
    path.write_text(json.dumps({"epochs": 7, "gamma": 0.5, "beta": 1}))
    ns = build_parser().parse_args(["search", "--config", str(path), "--epochs", "4", "--no-use-augmented"])
    cfg = cfgmod.from_args(cfgmod.SearchConfig, ns, cfgmod.load_config(cfgmod.SearchConfig, path))
    assert (cfg.epochs, cfg.gamma, cfg.beta, cfg.use_augmented) == (4, 0.5, 1.0, False)
    saved = tmp_path / "saved.json"
    cfgmod.save_config(cfg, saved)
    assert cfgmod.load_config(cfgmod.SearchConfig, saved) == cfg


def test_bad_config_file_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"epochz": 3}))
    assert main(["search", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "epochz" in err and "epochs" in err
    path.write_text('{"epochs": "three"}')
    assert main(["search", "--config", str(path)]) == 2
    assert "expects int" in capsys.readouterr().err


def test_missing_store_is_a_clear_error(tmp_path, capsys):
    assert main(["search", "--store", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "s")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_spaces_lists_ops_with_costs(capsys):
    assert main(["spaces", "--seq-len", "64"]) == 0
    text = capsys.readouterr().out
    assert "adabert_cnn" in text and "dil_conv7" in text and "FLOPs@64" in text


def test_genotype_show_prints_and_draws(tmp_path, capsys):
    from adabert.genotype import random_genotype

    path = tmp_path / "g.json"
    random_genotype("adabert_cnn", 0).save(path)
    assert main(["genotype", "show", str(path), "--output", str(tmp_path / "g.svg")]) == 0
    assert "adabert_cnn" in capsys.readouterr().out
    assert (tmp_path / "g.svg").read_text().startswith("<?xml")
