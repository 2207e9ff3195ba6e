"""The commands as a user meets them: ``adl <command>`` (installed by ``[project.scripts]``) and the
``python experiments/<command>.py`` scripts running the same ``main``; ``--help`` with examples, a help string and
the default of every option; one spelling per concept with the old ones kept; ``--print-config`` with the source
of every value, without starting anything. No Ray: connecting to it fails these tests.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, load_cli

from orchestrator.commands import COMMANDS
from orchestrator.commands import main as adl
from orchestrator.config import config_to_dict, load_config
from orchestrator.config.loading import DEFAULT_SOURCE, config_sources, config_yaml

SCRIPTS = ("search", "retrain", "validate", "predict", "export", "evaluate")
"""experiments/<name>.py scripts that run ``adl <name>``."""


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    def refuse(address=None):
        raise AssertionError("connect_ray was called")

    for module in ("orchestrator.cli", "orchestrator.commands.search", "orchestrator.commands.retrain",
                   "orchestrator.commands.validate"):
        monkeypatch.setattr(f"{module}.connect_ray", refuse)


def help_text(name: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(COMMANDS[name][0]).main(["--help"], prog=f"adl {name}")
    assert exit_.value.code == 0
    return capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- adl


def test_adl_is_installed_as_a_console_script():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "adl"]
    assert script.value == "orchestrator.commands:main"


def test_adl_lists_its_commands_and_refuses_unknown_ones(capsys):
    assert adl(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS) and "adl <command> --help" in out
    assert adl(["serch"]) == 2
    assert "unknown command 'serch'; did you mean 'search'?" in capsys.readouterr().err
    assert adl([]) == 2


def test_adl_starts_without_torch_or_ray():
    code = ("import sys; from orchestrator.commands import main; main(['--help']); "
            "sys.exit(any(m in sys.modules for m in ('torch', 'ray')))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=120).returncode == 0


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_script_runs_the_commands_main(name: str, monkeypatch):
    seen = []
    monkeypatch.setattr(f"{COMMANDS[name][0]}.main", lambda argv=None, prog=None, **kw: seen.append(argv) or 7)
    assert load_cli(name).main(["--x"]) == 7 and seen == [["--x"]]


def test_python_m_orchestrator_analyze_still_runs():
    proc = subprocess.run([sys.executable, "-m", "orchestrator.analyze", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "usage: python -m orchestrator.analyze" in proc.stdout


# ---------------------------------------------------------------------------------------------- help


def parser_of(name: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``adl <name>`` builds, caught where it parses."""
    caught = []

    def catch(self, args=None, namespace=None):
        caught.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(SystemExit):
        importlib.import_module(COMMANDS[name][0]).parse_args([])
    return caught[0]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_shows_the_examples(name: str, capsys):
    out = help_text(name, capsys)
    doc = importlib.import_module(COMMANDS[name][0]).__doc__
    examples = [line.strip() for line in doc.splitlines() if line.startswith("    ")]
    assert examples and all(line in out for line in examples), out
    assert out.startswith(f"usage: adl {name}")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_and_its_default_shows(name: str, monkeypatch):
    parser = parser_of(name, monkeypatch)
    formatter = parser.formatter_class(prog=name)
    for action in parser._actions:
        assert action.help, f"adl {name} {action.option_strings}: no help"
        if not (action.default is None or action.default is False or action.default is argparse.SUPPRESS):
            text = formatter._get_help_string(action)
            assert "default" in text, f"adl {name} {action.option_strings}: the default is not shown ({text})"


def _add_argument_calls(path: Path) -> list[tuple[int, ast.Call]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(n.lineno, n) for n in ast.walk(tree)
            if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "add_argument"]


ENTRY_POINT_SOURCES = sorted([*ROOT.glob("experiments/*.py"), *ROOT.glob("experiments/studies/*.py"),
                              *ROOT.glob("orchestrator/commands/*.py"), ROOT / "orchestrator" / "cli.py",
                              ROOT / "orchestrator" / "analysis" / "cli.py"])


@pytest.mark.parametrize("path", ENTRY_POINT_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_option_has_a_help_string(path: Path):
    missing = [f"{path.relative_to(ROOT)}:{line} {ast.unparse(call)[:80]}" for line, call in _add_argument_calls(path)
               if not any(k.arg == "help" for k in call.keywords)]
    assert not missing, "\n".join(missing)


def test_names_written_out_for_a_quick_help_match_their_sources():
    from orchestrator.commands import evaluate, retrain
    from orchestrator.inference.evaluate import EVAL_ROLES
    from search_space import VARIANTS

    assert set(retrain.ARCH_VARIANTS) == set(VARIANTS) and set(evaluate.ROLES) == set(EVAL_ROLES)


# ---------------------------------------------------------------------------------------------- flags


@pytest.mark.parametrize("name, old, new, extra", [
    ("predict", ["--run", "R"], ["--experiment", "R"], ["--images", "a.png", "--out", "o"]),
    ("evaluate", ["--run", "R"], ["--experiment", "R"], []),
    ("export", ["--run", "R", "--out", "m.pt"], ["--experiment", "R", "--out-file", "m.pt"], ["--format", "onnx"]),
    ("analyze", ["R"], ["--experiment", "R"], []),
])
def test_old_spellings_parse_as_the_new_ones(name, old, new, extra):
    module = importlib.import_module(COMMANDS[name][0])
    assert vars(module.parse_args(old + extra)) == vars(module.parse_args(new + extra))


def test_analyze_needs_one_experiment_folder(capsys):
    from orchestrator.analysis.cli import parse_args

    for argv in ([], ["a", "--experiment", "b"]):
        with pytest.raises(SystemExit):
            parse_args(argv)
    assert "--experiment b" in capsys.readouterr().err
    assert parse_args(["a", "--experiment", "a"]).results_dir == "a"


# ---------------------------------------------------------------------------------------------- --print-config


SMOKE = "experiments/configs/smoke.yaml"


def printed_config(script: str, args: list[str], capsys) -> tuple[dict, dict[str, str]]:
    capsys.readouterr()
    assert load_cli(script).main(args) == 0
    out = capsys.readouterr().out
    sources, section = {}, ""
    for line in out.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key = line.split(":")[0].strip()
        if line.rstrip().endswith(":"):
            section = key + "."
        else:
            sources[(section if line.startswith(" ") else "") + key] = line.rsplit("  # ", 1)[1]
    return yaml.safe_load(out), sources


def test_search_prints_the_config_and_where_each_value_came_from(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    data, sources = printed_config("search", ["--config", SMOKE, "--print-config", "search.epochs=4"], capsys)
    assert data == config_to_dict(load_config(SMOKE, ["search.epochs=4"]))
    assert sources["search.epochs"] == "override search.epochs=4"
    assert sources["search_space.layers"] == SMOKE and sources["search.lr"] == DEFAULT_SOURCE
    assert set(sources) == set(config_sources(SMOKE))


def test_retrain_names_the_arch_as_the_source_of_f(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    data, sources = printed_config("retrain", ["--arch", "autodeeplab-M", "--config", SMOKE, "--print-config"], capsys)
    assert data["retrain"]["filter_multiplier"] == 32
    assert sources["retrain.filter_multiplier"] == "--arch autodeeplab-M"


def test_validate_prints_the_arm_config_and_refuses_it_in_experiment_mode(monkeypatch, capsys, tmp_path: Path):
    monkeypatch.chdir(ROOT)
    data, sources = printed_config("validate", ["--config", SMOKE, "--print-config", "retrain.epochs=3"], capsys)
    assert data["retrain"]["epochs"] == 3 and sources["retrain.epochs"] == "override retrain.epochs=3"
    with pytest.raises(SystemExit) as exit_:
        load_cli("validate").main(["--experiment", str(tmp_path), "--print-config"])
    assert exit_.value.code == 2 and "--print-config goes with --config" in capsys.readouterr().err


def test_sources_of_overrides_inside_mappings_and_of_whole_sections(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"options": {"size": 16, "task": "multi"}}, "search": {"epochs": 30}}))
    overrides = ["data.options.size=8", "tune={num_samples: 3}", "search.epochs=25", "search.epochs=26"]
    sources = config_sources(path, overrides)
    assert sources["data.options"] == f"{path}, override data.options.size=8"  # task still from the file
    assert sources["tune.num_samples"] == "override tune={num_samples: 3}" and sources["tune.metric"] == "default"
    assert sources["search.epochs"] == "override search.epochs=26"  # the last one wins, as it does in the config
    cfg = load_config(path, overrides)
    assert yaml.safe_load(config_yaml(cfg, sources)) == config_to_dict(cfg)
