"""The README stays true: its performance table is bench/results.md as `make bench` wrote it, and
its command-line block names every command."""
from cccad.cli import parser
from conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_performance_table_is_the_benchmarks_results_file():
    results = (ROOT / "bench" / "results.md").read_text().strip()
    assert results.startswith("| benchmark |") and results in README


def test_every_command_is_in_the_readme():
    commands = parser()._subparsers._group_actions[0].choices
    for name in commands:
        assert f"cccad {name} " in README, name
