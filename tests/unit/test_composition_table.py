"""The README's "Verified compositions" table and its generator (tests/host/composition_matrix.py):
the section is rewritten only between its markers, a partial test run is refused, and the
table in README covers every composition the host tests verify."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

HOST = Path(__file__).resolve().parents[1] / "host"


@pytest.fixture(scope="module")
def matrix():
    spec = importlib.util.spec_from_file_location("composition_matrix_under_test", HOST / "composition_matrix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def full_run(matrix) -> dict:
    return {"comfyui": "0.0.test", "rows": [
        {"node": node, "placement": where, "verified": f"checked {node} {where}",
         "test": f"tests/host/t.py::test_{i}"}
        for i, (node, where) in enumerate(reversed(matrix.EXPECTED))]}


def test_rewrite_touches_only_the_marked_section(matrix):
    text = f"# Title\n\nbefore\n\n{matrix.START}\nold table\n{matrix.END}\n\nafter\n"
    new = matrix.rewrite_section(text, "| new |")
    assert new == f"# Title\n\nbefore\n\n{matrix.START}\n| new |\n{matrix.END}\n\nafter\n"
    assert matrix.rewrite_section(new, "| new |") == new
    for broken in ("no markers", f"{matrix.END}\n{matrix.START}", f"{matrix.START}{matrix.END}{matrix.START}{matrix.END}"):
        with pytest.raises(ValueError, match="composition-table"):
            matrix.rewrite_section(broken, "x")


def test_table_follows_expected_order(matrix):
    table = matrix.markdown(full_run(matrix))
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [tuple(cell.strip() for cell in row.split("|")[1:3]) for row in rows] == matrix.EXPECTED
    assert "0.0.test" in table and "`t.py::test_0`" in table


def test_partial_runs_are_refused(matrix, tmp_path, capsys):
    data = full_run(matrix)
    artifact = tmp_path / "composition-matrix.json"
    first = matrix.EXPECTED[0]
    artifact.write_text(json.dumps({**data, "rows": [r for r in data["rows"] if (r["node"], r["placement"]) != first]}))
    assert matrix.main(["--artifact", str(artifact)]) == 1
    assert matrix.EXPECTED[0][0] in capsys.readouterr().err
    assert matrix.main(["--artifact", str(artifact), "--allow-partial"]) == 0
    assert matrix.main(["--artifact", str(tmp_path / "absent.json")]) == 2


def test_readme_lists_every_verified_composition(matrix):
    text = matrix.README.read_text()
    section = text.split(matrix.START, 1)[1].split(matrix.END, 1)[0]
    for node, where in matrix.EXPECTED:
        assert f"| {node} | {where} |" in section, f"README lacks {node} ({where}): run composition_matrix.py --readme"
