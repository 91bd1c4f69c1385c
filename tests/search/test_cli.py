"""The CLI contract: every command has --help; user errors are one sentence and exit code 2."""

import pytest

from search.cli import COMMANDS, build_parser, main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("    ") and not line.startswith("     ")]
    assert listed == list(COMMANDS)  # every command, in the documented order


def test_each_command_has_help(capsys):
    names = build_parser()._subparsers._group_actions[0].choices
    assert list(names) == list(COMMANDS)
    for name in names:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0, name
        assert "usage: squeezefit " + name in capsys.readouterr().out


def test_bad_input_is_one_sentence_and_exit_2(tmp_path, capsys):
    assert main(["data", "--train", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and "at least one train" in err

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert main(["search", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("budget_ms: 5\nbudegt: 3\n")
    assert main(["search", str(unknown)]) == 2
    assert "unknown setting 'budegt'" in capsys.readouterr().err

    assert main(["search", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
