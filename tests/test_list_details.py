"""`benchmark list --details METHOD`: the method's card."""
from benchmark.cli import main


def test_list_details_afd_card(capsys):
    rc = main(["list", "--details", "afd"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "afd.compact" in out and "afd.lite0" in out  # every preset, by name
    assert "afd_compact.pt" in out  # the weights file
    assert "backbone='shapes-cnn'" in out  # the preset's kwargs
    assert "lightning_modules.dedrifters.afd" in out and "AFD-Module (Peng et al." in out  # the family module's summary
    assert "benchmark train --method afd --preset lite0" in out  # retrain command from the preset description
    assert "task models" not in out  # the card, not the whole listing


def test_list_details_one_preset_and_unknown(capsys):
    assert main(["list", "--details", "dncnn.compact"]) == 0
    out = capsys.readouterr().out
    assert "dncnn.compact" in out and "dncnn.paper" not in out
    assert main(["list", "--details", "no_such_method"]) == 2
    assert "unknown method" in capsys.readouterr().err
