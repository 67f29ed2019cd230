"""Every measured row records the exact command and the code it ran; the committed boards refuse a modified tree."""
import hashlib
import subprocess
import time

import pandas as pd
import pytest

from benchmark.boards import provenance


def _git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, check=True).stdout


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A throwaway repository standing in for this one: code, and a committed board folder."""
    r = tmp_path / "repo"
    (r / "leaderboards").mkdir(parents=True)
    (r / "code.py").write_text("x = 1\n")
    (r / "leaderboards" / "fidelity.csv").write_text("method\njpeg\n")
    _git(r, "init", "-q")
    _git(r, "-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    _git(r, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    monkeypatch.setattr(provenance, "REPO", r)
    monkeypatch.setattr(provenance, "COMMITTED_BOARDS", r / "leaderboards")
    provenance.tree_state.cache_clear()
    yield r
    provenance.tree_state.cache_clear()


def test_a_clean_tree_records_its_commit_and_rows_on_the_boards_do_not_dirty_it(repo):
    head = _git(repo, "rev-parse", "--short=12", "HEAD").decode().strip()
    assert provenance.git_commit() == head
    (repo / "leaderboards" / "fidelity.csv").write_text("method\njpeg\ndncnn\n")  # a run's rows landing
    provenance.tree_state.cache_clear()
    assert provenance.git_commit() == head and provenance.refusal(repo / "leaderboards") is None


def test_a_modified_tree_records_a_digest_of_its_diff_and_the_committed_boards_refuse_it(repo):
    head = _git(repo, "rev-parse", "--short=12", "HEAD").decode().strip()
    (repo / "code.py").write_text("x = 2\n")
    provenance.tree_state.cache_clear()
    diff = _git(repo, "diff", "HEAD", "--binary", "--", ".", ":(exclude)leaderboards")
    assert b"+x = 2" in diff
    assert provenance.git_commit() == f"{head}-dirty+{hashlib.sha256(diff).hexdigest()[:12]}"
    why = provenance.refusal(repo / "leaderboards")
    assert "code.py" in why and head in why and "--leaderboard DIR" in why
    assert provenance.refusal(repo / "elsewhere") is None  # another board takes the row, labelled
    first = provenance.git_commit()
    (repo / "code.py").write_text("x = 3\n")  # another modification, another label
    provenance.tree_state.cache_clear()
    assert provenance.git_commit() != first and provenance.git_commit().startswith(f"{head}-dirty+")


def test_an_untracked_source_file_makes_the_tree_modified(repo):
    (repo / "new_module.py").write_text("y = 1\n")
    provenance.tree_state.cache_clear()
    commit, files, digest = provenance.tree_state()
    assert files == ("new_module.py",) and len(digest) == 12
    (repo / "new_module.py").write_text("y = 2\n")  # its bytes enter the digest
    provenance.tree_state.cache_clear()
    assert provenance.tree_state()[2] != digest


def test_the_cli_refuses_the_committed_boards_from_a_modified_tree_at_once(repo, capsys):
    from benchmark.cli import main

    (repo / "code.py").write_text("x = 2\n")
    provenance.tree_state.cache_clear()
    t0 = time.perf_counter()
    assert main(["run", "--method", "jpeg", "--qf", "10", "--leaderboard", str(repo / "leaderboards") + "/"]) == 2
    assert time.perf_counter() - t0 < 1.0
    err = capsys.readouterr().err
    assert "refusing to write the committed boards" in err and "code.py" in err
    assert (repo / "leaderboards" / "fidelity.csv").read_text() == "method\njpeg\n"  # untouched


def test_a_row_records_the_exact_command_and_commit(tmp_path, monkeypatch):
    from benchmark.cli import main

    monkeypatch.chdir(tmp_path)
    argv = ["run", "--method", "jpeg", "--qf", "10", "--leaderboard", "my board/", "--quiet"]
    assert main(argv) == 0
    row = pd.read_csv(tmp_path / "my board" / "fidelity.csv", dtype=str, keep_default_na=False).iloc[0]
    assert row.command == "benchmark run --method jpeg --qf 10 --leaderboard 'my board/' --quiet"
    assert row.git_commit == provenance.git_commit() and row.git_commit != ""


@pytest.mark.parametrize("argv", [["bdrate", "--leaderboard", "{boards}/"],
                                  ["efficiency", "--method", "dncnn.compact"]])  # its default board is committed
def test_the_derived_boards_refuse_a_modified_tree_too(repo, capsys, argv):
    from benchmark.cli import main

    (repo / "code.py").write_text("x = 2\n")
    provenance.tree_state.cache_clear()
    argv = [a.format(boards=repo / "leaderboards") for a in argv]
    if argv[0] == "bdrate":
        argv += ["--boards", str(repo / "leaderboards")]
    assert main(argv) == 2
    assert "refusing to write the committed boards" in capsys.readouterr().err


def test_an_efficiency_row_records_its_command(tmp_path, monkeypatch):
    from benchmark.cli import main

    monkeypatch.chdir(tmp_path)
    argv = ["efficiency", "--method", "dncnn.compact", "--size", "32", "--repeat", "1", "--leaderboard", "eff.csv"]
    assert main(argv) == 0
    df = pd.read_csv(tmp_path / "eff.csv", dtype=str, keep_default_na=False)
    assert set(df.command) == {"benchmark " + " ".join(argv)}
    assert set(df.git_commit) == {provenance.git_commit()}
