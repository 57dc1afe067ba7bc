"""The paper's Table 1 beside ours, row by row, on the paper's metrics (docs/results.md).

    python scripts/paper_side_by_side.py ../shared/paper/table1.csv docs/eval-session5/*.json > table.md

For each row of the paper's table1.csv (model, setting, m) it finds our configurations of that
row in the given evaluation summaries (grouped over seeds by the package's own rule,
``sdmvae_cli.evaluation.results.aggregate``), one line per stopping rule, and prints the paper's
PESQ (raw P.862), STOI (the paper's is ESTOI) and Hoyer beside our mean ± std over seeds and the
difference. Nothing is tuned here: the summaries are test-split scores of finished runs.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from sdmvae_cli.evaluation.results import aggregate, read_summaries

PAPER_COLUMNS = (("pesq", "pesq_nb", 2), ("stoi", "estoi", 3), ("hoyer", "hoyer", 2))


def paper_label(model: str, setting: str) -> str:
    """Our row label of a paper row (the families' own labels, nets/*.py ``family_label``)."""
    if model == "VAE":
        return "VAE"
    if model == "VSC":
        return f"VSC ({setting})"
    if setting == "identity":
        return "SDM-VAE (identity)"
    return f"SDM-VAE (DCT, k={setting.split('k=')[1]})"


def main(paper_csv: str, summaries: list[str]) -> None:
    groups = aggregate(read_summaries([Path(p) for p in summaries]))
    head = ["paper row", "m", "our stop rule", "seeds"] + [f"{p} paper / ours (diff)" for p, _, _ in PAPER_COLUMNS]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in csv.DictReader(open(paper_csv, newline="")):
        label, m = paper_label(row["model"], row["setting"]), int(row["m"])
        ours = [g for g in groups if g.m == m and g.label.split(" [")[0].split(" #")[0] == label]
        for g in sorted(ours, key=lambda g: g.label):
            rule = g.label[len(label) :].strip(" []") or "posterior-mean (default)"
            cells = []
            for p, key, digits in PAPER_COLUMNS:
                st, ref = g.values[key], float(row[p])
                cells.append(
                    "-"
                    if st.mean is None
                    else f"{ref:.{digits}f} / {st.mean:.{digits}f} ± {st.std or 0:.{digits}f} ({st.mean - ref:+.{digits}f})"
                )
            name = f"{row['model']} {row['setting']}".strip()
            print(f"| {name} | {m} | {rule} | {len(g.runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: paper_side_by_side.py PAPER_TABLE1_CSV SUMMARY.json...")
    main(sys.argv[1], sys.argv[2:])
