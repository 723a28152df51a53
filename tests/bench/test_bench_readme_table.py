"""The README's result table is the report's: :func:`render_readme_table` and :func:`check_readme_table`."""

from __future__ import annotations

from synthetic import record

from rkopt.bench.analysis import variants
from rkopt.bench.report import (
    README_COLUMNS,
    check_readme_table,
    format_lr,
    readme_table_rows,
    render_readme_table,
)


def _comparisons():
    runs = []
    for seed in (0, 1):
        runs += [
            record("adam", 1e-3, seed, val=0.93, reach=(168, 0.48), workload="mlp-mnist5k", batch_size=32),
            record("adam", 3e-3, seed, val=0.92, reach=(168, 0.5), workload="mlp-mnist5k", batch_size=32),
            record("rk4", 0.3, seed, val=0.94, reach=(252, 0.53), workload="mlp-mnist5k", batch_size=32),
            record("rk4", 1.0, seed, val=None, diverged=True, workload="mlp-mnist5k", batch_size=32),
            record("rk4", 0.3, seed, val=0.7, workload="mlp-mnist5k", batch_size=512, stage_batches="fresh"),
        ]
    runs.append(record("adam", 1e-2, 0, val=5.0, metric="perplexity", target=6.0, workload="charlm"))
    return variants(runs)


def test_the_rendered_table_has_the_readme_format_and_passes_the_check():
    text = render_readme_table(_comparisons())
    lines = text.splitlines()
    assert lines[0] == "| " + " | ".join(README_COLUMNS) + " |"
    assert lines[1] == "|" + "---|" * len(README_COLUMNS)
    assert [line for line in lines[2:] if line.startswith("|")] == [
        "| charlm | perplexity ≤ 6 | 8 | adam | 0.01 (edge) | 100 | 1.00 | 5 | ≥ 0.00 | none | 2 | 10 |",
        "| mlp-mnist5k | accuracy ≥ 0.8 | 32 | adam | 1e-3 (edge) | 168 | 0.48 | 0.930 ± 0.000 | ≥ 0.48 "
        "| none | 3.36 | 2.86 |",
        "| mlp-mnist5k | accuracy ≥ 0.8 | 32 | rk4 | 0.3 (edge) | 252 | 0.53 | 0.940 ± 0.000 | ≥ 0.00 | 1 "
        "| 5.04 | 2.1 |",
        "| mlp-mnist5k | accuracy ≥ 0.8 | 512 | rk4 [fresh] | 0.3 (edge) | not reached | not reached "
        "| 0.700 ± 0.000 | ≥ 0.00 | none | 2 | 10 |",
    ]
    assert "within 0.01 (accuracy), 0.01 relative (perplexity) of the best" in lines[-1]  # the legend
    assert check_readme_table(text) == []
    readme = f"# README\n\nSome prose.\n\n{text}\nMore prose.\n"
    assert check_readme_table(readme, expected=text) == []


def test_the_check_names_what_is_wrong():
    text = render_readme_table(_comparisons())
    assert check_readme_table("no table here") == [
        "no table with the report's header '| " + " | ".join(README_COLUMNS) + " |'"
    ]
    broken = text.replace("| 168 |", "| fast |")
    (problem,) = check_readme_table(broken)
    assert "grad evals to target 'fast' is not in the report's format" in problem and "adam" in problem
    short = text.replace("| 0.48 |", "|", 1)
    assert any("11 cells, expected 12" in p for p in check_readme_table(short))
    edited = text.replace("0.930 ± 0.000", "0.931 ± 0.000")
    assert check_readme_table(edited) == []  # well-formed...
    problems = check_readme_table(edited, expected=text)  # ...but not the report's numbers
    assert len(problems) == 2 and "missing or different row" in problems[0]
    assert check_readme_table(text.replace("1e-3 (edge)", "1e-3 (edge) (≈)")) == []  # both flags
    assert check_readme_table(text.replace("1e-3 (edge)", "1e-3 (edgy)")) != []
    header_only = "\n".join(text.splitlines()[:2])
    assert check_readme_table(header_only) == ["the table has no rows"]


def test_learning_rates_are_written_as_in_the_readme():
    assert [format_lr(x) for x in (1e-3, 3e-3, 3.16e-4, 0.3, 1.0, 0.0316, 1e9, 0.01)] == [
        "1e-3", "3e-3", "3.16e-4", "0.3", "1", "0.0316", "1e9", "0.01",
    ]  # fmt: skip


def test_the_readme_result_table_is_in_the_report_format():
    from pathlib import Path

    from rkopt.bench.report import check_readme_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert check_readme_table(readme) == []
    rows = readme_table_rows(readme)  # the main job's: two workloads, no lr selected at a grid edge
    assert {row[0] for row in rows} == {"mlp-mnist5k", "mlp-digits"}
    assert not [row for row in rows if "(edge)" in row[4]]
