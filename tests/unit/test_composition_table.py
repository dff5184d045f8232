"""The README's "Verified compositions" table and its generator (tests/host/composition_matrix.py):
the section is rewritten only between its markers, a partial test run is refused, and the
table in README covers every composition the host tests verify."""
from __future__ import annotations

import json

import pytest

import composition_matrix  # tests/host, on the import path (pyproject.toml)


@pytest.fixture(scope="module")
def matrix():
    return composition_matrix


def full_run(matrix) -> dict:
    return {"comfyui": "0.0.test", "rows": [
        {"model": model, "node": node, "placement": where, "verified": f"checked {node} {where}",
         "test": f"tests/host/t.py::test_{i}"}
        for i, (model, node, where) in enumerate(reversed(matrix.EXPECTED))]}


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
    assert [tuple(cell.strip() for cell in row.split("|")[1:4]) for row in rows] == matrix.EXPECTED
    assert "0.0.test" in table and "`t.py::test_0`" in table
    assert {model for model, _, _ in matrix.EXPECTED} == {"SD1.5", "SDXL"}


def test_artifacts_from_before_the_model_column_read_as_sd15(matrix):
    rows = [{k: v for k, v in r.items() if k != "model"} for r in full_run(matrix)["rows"] if r["model"] == "SD1.5"]
    data = {"comfyui": "0.0.test", "rows": rows}
    assert matrix.missing(data) == [key for key in matrix.EXPECTED if key[0] == "SDXL"]
    assert "| SD1.5 | LoraLoader | model / CLIP patch |" in matrix.markdown(data)


def test_partial_runs_are_refused(matrix, tmp_path, capsys):
    data = full_run(matrix)
    artifact = tmp_path / "composition-matrix.json"
    first = matrix.EXPECTED[-1]
    artifact.write_text(json.dumps({**data, "rows": [r for r in data["rows"]
                                                     if (r["model"], r["node"], r["placement"]) != first]}))
    assert matrix.main(["--artifact", str(artifact)]) == 1
    assert f"{first[0]}: {first[1]} ({first[2]})" in capsys.readouterr().err
    assert matrix.main(["--artifact", str(artifact), "--allow-partial"]) == 0
    assert matrix.main(["--artifact", str(tmp_path / "absent.json")]) == 2


def test_readme_lists_every_verified_composition(matrix):
    text = matrix.README.read_text()
    section = text.split(matrix.START, 1)[1].split(matrix.END, 1)[0]
    for model, node, where in matrix.EXPECTED:
        assert f"| {model} | {node} | {where} |" in section, \
            f"README lacks {model}: {node} ({where}): run composition_matrix.py --readme"
