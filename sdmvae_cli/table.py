"""`sdmvae table`: evaluation summaries rendered as the paper's Table 1.

Rows are model configurations (VAE; VSC with its alpha; SDM-VAE with its dictionary and k;
...), columns are the latent size m, each with PESQ, STOI and Hoyer (mean over files /
frames). A configuration missing at some m shows '-'.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from sdmvae_cli.errors import SdmvaeError

METRICS = ("pesq", "stoi", "hoyer")


def row_label(m: dict) -> str:
    name = m["model"]
    if name == "vae":
        return "VAE"
    if name == "vsc":
        return f"VSC (alpha={m['alpha']:g})"
    if name == "sdm":
        if m["dictionary"] == "identity":
            return "SDM-VAE (identity)"
        return f"SDM-VAE ({m['dictionary']}, k={m['k']})" if m["dictionary"] == "learned" else f"SDM-VAE (DCT, k={m['k']})"
    if name == "threshold":
        lam = "learned lambda" if m["learn_threshold"] else f"lambda={m['threshold']:g}"
        extra = f", J={m['samples']}" if m.get("samples", 1) > 1 else ""
        return f"Thresholded ({m['base']}, {lam}{extra})"
    if name == "laplace":
        return "Laplace-prior VAE"
    if name == "cauchy":
        return "Cauchy VAE"
    return name


MODEL_ORDER = ("vae", "vsc", "sdm", "threshold", "laplace", "cauchy")
DICT_ORDER = ("identity", "dct", "learned")


def row_key(m: dict) -> tuple:
    """The paper's row order: VAE, VSC by alpha, SDM-VAE identity then DCT by k, then the others."""
    name = m["model"]
    rank = MODEL_ORDER.index(name) if name in MODEL_ORDER else len(MODEL_ORDER)
    if name == "vsc":
        return (rank, m["alpha"])
    if name == "sdm":
        return (rank, DICT_ORDER.index(m["dictionary"]) if m["dictionary"] in DICT_ORDER else 9, m["k"])
    if name == "threshold":
        return (rank, m["learn_threshold"], m["base"], m["threshold"])
    return (rank,)


@dataclass
class Table1:
    rows: list[str]
    ms: list[int]
    cells: dict[tuple[str, int], dict[str, float | None]]


def build_table(paths: list[Path]) -> Table1:
    cells: dict[tuple[str, int], dict[str, float | None]] = {}
    keys: dict[str, tuple] = {}
    ms: set[int] = set()
    for p in paths:
        try:
            s = json.loads(Path(p).read_text())
        except FileNotFoundError:
            raise SdmvaeError(f"{p}: no such file") from None
        except json.JSONDecodeError:
            raise SdmvaeError(f"{p}: not a JSON summary from `sdmvae evaluate`") from None
        if s.get("kind") != "checkpoint" or "model" not in s:
            raise SdmvaeError(f"{p}: not a checkpoint evaluation summary (run `sdmvae evaluate CKPT PREPARED_DIR`)")
        label, m = row_label(s["model"]), int(s["model"]["latent"])
        keys.setdefault(label, row_key(s["model"]))
        ms.add(m)
        cells[(label, m)] = {
            "pesq": s["metrics"]["pesq"]["mean"],
            "stoi": s["metrics"]["stoi"]["mean"],
            "hoyer": s["sparsity"]["hoyer_mean"],
        }
    rows = sorted(keys, key=lambda r: (keys[r], r))
    return Table1(rows, sorted(ms), cells)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def render(t: Table1, fmt: str):
    if fmt == "markdown":
        head = "| model | " + " | ".join(f"m={m} {k.upper() if k != 'hoyer' else 'Hoyer'}" for m in t.ms for k in METRICS) + " |"
        sep = "|---|" + "---:|" * (len(t.ms) * len(METRICS))
        lines = [head, sep]
        for r in t.rows:
            vals = [_fmt(t.cells.get((r, m), {}).get(k)) for m in t.ms for k in METRICS]
            lines.append(f"| {r} | " + " | ".join(vals) + " |")
        return "\n".join(lines) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["model", "m", *METRICS])
        for r in t.rows:
            for m in t.ms:
                c = t.cells.get((r, m))
                if c:
                    w.writerow([r, m, *(("" if c[k] is None else f"{c[k]:.4f}") for k in METRICS)])
        return buf.getvalue()
    if fmt == "rich":
        from rich.table import Table

        rt = Table(title="Table 1: resynthesis quality and latent sparsity")
        rt.add_column("model")
        for m in t.ms:
            for k in METRICS:
                rt.add_column(f"m={m}\n{'Hoyer' if k == 'hoyer' else k.upper()}", justify="right")
        for r in t.rows:
            rt.add_row(r, *[_fmt(t.cells.get((r, m), {}).get(k)) for m in t.ms for k in METRICS])
        return rt
    raise SdmvaeError(f"unknown table format {fmt!r}; expected rich, markdown or csv")
