"Objective names: one separator style (hyphens); old names accepted for one release, with a warning."

import pytest

from alignbook.cli import main
from alignbook.config import ALIASES, OBJECTIVES, get_config, load_plugins


def test_objective_names_use_hyphens():
    load_plugins()
    assert not [n for n in OBJECTIVES if "_" in n], "objective names take hyphens, not underscores"


def test_old_name_is_an_alias_with_a_warning():
    load_plugins()
    assert ALIASES["sft_chosen"] == "sft-chosen"
    with pytest.warns(FutureWarning, match="now called 'sft-chosen'"):
        cfg = get_config("sft_chosen", "toy")
    assert cfg.objective == "sft-chosen"
    assert get_config("sft-chosen", "toy") == cfg


def test_cli_list_names_the_old_name(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("sft-chosen"))
    assert "sft_chosen" in line
