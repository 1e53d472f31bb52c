"""Training benchmark: `cgd eval` of the embedded default, `cgd train` with its defaults, and
comparison recipes on a fixed time budget, on each development set; writes docs/RESULTS.md.

Every row runs the real CLI in a subprocess and is cached as JSON under --work (finished rows are
skipped, interrupted trainings resume), so the script can be stopped and run again.

    nice -n 10 .venv/bin/python benchmarks/train_bench.py --sets gtsrb32,caltech101
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
LOG = logging.getLogger("train_bench")
KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r")


@dataclass(frozen=True)
class Row:
    """One benchmark row: `train_args` None means the embedded default model, evaluated only."""

    name: str
    label: str
    train_args: tuple[str, ...] | None
    fixed_budget: bool = False


def rows(budget: float) -> list[Row]:
    b = f"{budget:g}"
    return [
        Row("default_model", "embedded default (no training)", None),
        Row("default_recipe", "`cgd train` defaults (Proxy Anchor, SG, 15 min)", ()),
        Row("triplet15", "CGD triplet+aux, SG (15 min; the first default)", ("--loss", "triplet")),
        Row("triplet_sg", f"CGD triplet+aux, SG ({b} min)", ("--loss", "triplet", "--max-minutes", b), True),
        Row("proxy_anchor", f"Proxy Anchor, SG ({b} min)",
            ("--loss", "proxy_anchor", "--max-minutes", b), True),
        Row("triplet_mdr", f"triplet+MDR, SG ({b} min)",
            ("--loss", "triplet_mdr", "--max-minutes", b), True),
        Row("desc_g", f"Proxy Anchor, G ({b} min)", ("--descriptors", "G", "--max-minutes", b), True),
        Row("desc_mg", f"Proxy Anchor, MG ({b} min)", ("--descriptors", "MG", "--max-minutes", b), True),
        Row("desc_gsm", f"Proxy Anchor, GSM ({b} min)", ("--descriptors", "GSM", "--max-minutes", b), True),
    ]


def cgd(*args: str) -> list[str]:
    return [sys.executable, "-m", "service.cli", *args]


def median_speed(history: list[dict]) -> float | None:
    """Median training images/s over the epochs after the first (warm-up epochs skip the backbone's
    backward pass and are faster); the first epoch's when there is no other."""
    speeds = [h["images_per_s"] for h in history[1:] if h.get("images_per_s")] or [
        h["images_per_s"] for h in history[:1] if h.get("images_per_s")]
    return round(statistics.median(speeds), 1) if speeds else None


def load_average() -> list[float]:
    """1-, 5- and 15-minute load averages (the machine is shared: they explain the speeds)."""
    return [round(x, 2) for x in os.getloadavg()]


def run_row(row: Row, data: Path, work: Path) -> dict:
    """Train (unless the row is the default model), then `cgd eval --json` on the test split."""
    record: dict = {"row": row.name, "label": row.label, "data": data.name,
                    "stand_ins": os.environ.get("CGD_STANDINS", ""),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_start": load_average()}
    checkpoint = work / f"{data.name}__{row.name}.pt"
    train_cmd: list[str] | None = None
    if row.train_args is not None:
        train_cmd = cgd("train", "--data", str(data), "--out", str(checkpoint), "--resume", "--no-progress",
                        *row.train_args)
        began = time.perf_counter()
        done = subprocess.run(train_cmd, cwd=REPO, check=True, capture_output=True, text=True)
        record["train_wall_s"] = round(time.perf_counter() - began, 1)
        record["train_summary"] = json.loads(done.stdout.strip().splitlines()[-1])
        curves = json.loads(checkpoint.with_suffix(".curves.json").read_text())
        record["images_per_s"] = median_speed(curves["history"])
        record["load_after_train"] = load_average()
    eval_cmd = cgd("eval", "--data", str(data), "--split", "test", "--json",
                   *(("--checkpoint", str(checkpoint)) if train_cmd else ()))
    began = time.perf_counter()
    done = subprocess.run(eval_cmd, cwd=REPO, check=True, capture_output=True, text=True)
    record["eval_wall_s"] = round(time.perf_counter() - began, 1)
    record["test"] = json.loads(done.stdout.strip().splitlines()[-1])
    record["load_end"] = load_average()
    shown = [c.replace(sys.executable, "python").replace(str(data.parent), "../shared/data")
             .replace(f"{REPO}/", "") for c in (train_cmd or eval_cmd)]
    command = " ".join(shown[1:] if shown[0] == "python" else shown)
    record["command"] = command.replace("-m service.cli", "cgd")
    return record


EARLIER = ("an earlier session; its cache was lost and the row was reconstructed from the "
           "RESULTS.md table of that session")


def _row_name(command: str, all_rows: list[Row]) -> str | None:
    """The row a RESULTS.md command belongs to: `--out .../<set>__<row>.pt`, or `cgd eval` of the
    embedded default."""
    match = re.search(r"__([A-Za-z0-9_]+)\.pt\b", command)
    if match:
        name = match.group(1)
    elif command.startswith("cgd eval") and "--checkpoint" not in command:
        name = next((r.name for r in all_rows if r.train_args is None), None)
    else:
        return None
    return name if any(r.name == name for r in all_rows) else None


def _figure(cell: str) -> float | None:
    return None if cell in ("", "-") else round(float(cell) / 100, 6)


def parse_results(text: str, all_rows: list[Row]) -> dict[tuple[str, str], dict]:
    """Cache records rebuilt from a RESULTS.md written by `write_results`, keyed by (set, row):
    only what the table shows (test figures, validation MAP@R, kept start, walls, speed, command),
    marked `from_earlier_run`. Rows marked 'not run' and rows of unknown commands are skipped."""
    records: dict[tuple[str, str], dict] = {}
    data_name = None
    for line in text.splitlines():
        heading = re.match(r"### (\S+) \(test split\)", line)
        if heading:
            data_name = heading.group(1)
            continue
        if data_name is None or not line.startswith("| "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) != 11 or cells[0] == "row" or cells[1] in ("", "not run") or set(cells[1]) == {"-"}:
            continue
        label, *figures, val, kept, wall, speed, command = cells
        label = label.removesuffix(" *")
        command = command.strip("`")
        name = _row_name(command, all_rows)
        if name is None:
            LOG.warning("RESULTS.md row %r on %s: unknown command, not seeded", label, data_name)
            continue
        record: dict = {"row": name, "label": label, "data": data_name, "from_earlier_run": True,
                        "seeded_from": EARLIER, "command": command,
                        "test": dict(zip(KEYS, map(_figure, figures), strict=True)),
                        "images_per_s": None if speed == "-" else float(speed)}
        if wall.startswith("eval "):
            record["eval_wall_s"] = float(wall.removeprefix("eval ").removesuffix(" s"))
        else:
            record["train_wall_s"] = round(60 * float(wall.removesuffix(" min")), 1)
        if val != "-":
            start, best = (float(v) / 100 for v in val.split(" -> "))
            record["train_summary"] = {"validation_start_model": {"map@r": round(start, 6)},
                                       "validation_best_trained": {"map@r": round(best, 6)},
                                       "kept_start_model": kept == "yes"}
        records[(data_name, name)] = record
    return records


def seed_cache(results: Path, sets: list[Path], all_rows: list[Row], work: Path) -> int:
    """Write a cache entry for every row of `results` whose entry is missing, so that rows
    measured in an earlier session survive a lost cache (they are then not re-run; delete the JSON
    and run with --no-seed to re-measure one)."""
    if not results.is_file():
        return 0
    wanted = {data.name for data in sets}
    seeded = 0
    for (data_name, name), record in parse_results(results.read_text(), all_rows).items():
        path = work / f"{data_name}__{name}.json"
        if data_name in wanted and not path.is_file():
            path.write_text(json.dumps(record, indent=2))
            LOG.info("seeded %s from %s (%s)", path.name, results, "earlier run")
            seeded += 1
    return seeded


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def table(data_name: str, all_rows: list[Row], work: Path) -> list[str]:
    lines = [f"### {data_name} (test split)", "",
             "| row | R@1 | R@2 | R@4 | R@8 | MAP@R | val MAP@R start -> best | kept start | train wall | "
             "images/s | command |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in all_rows:
        path = work / f"{data_name}__{row.name}.json"
        if not path.is_file():
            lines.append(f"| {row.label} | not run | | | | | | | | | |")
            continue
        rec = json.loads(path.read_text())
        earlier = rec.get("from_earlier_run", False)
        test = rec["test"]
        summary = rec.get("train_summary")
        val = "-"
        kept = "-"
        if summary:
            val = (f"{pct(summary['validation_start_model']['map@r'])} -> "
                   f"{pct(summary['validation_best_trained']['map@r'])}")
            kept = "yes" if summary["kept_start_model"] else "no"
        if "train_wall_s" in rec:
            wall = f"{rec['train_wall_s'] / 60:.1f} min"
        else:
            wall = f"eval {rec['eval_wall_s']:.0f} s"
        speed = rec.get("images_per_s") or "-"
        label = rec.get("label", row.label) + (" *" if earlier else "")
        lines.append(f"| {label} | " + " | ".join(pct(test.get(k)) for k in KEYS)
                     + f" | {val} | {kept} | {wall} | {speed} | `{rec['command']}` |")
    if any(json.loads(p.read_text()).get("from_earlier_run") for p in work.glob(f"{data_name}__*.json")):
        lines += ["", f"\\* measured in {EARLIER}."]
    return [*lines, ""]


def write_results(sets: list[Path], all_rows: list[Row], work: Path, notes: Path, out: Path) -> None:
    header = [
        "# Training benchmark results", "",
        "Produced by `benchmarks/train_bench.py` (figures in %, test split = classes never seen in "
        "training; every test image queries all other test images). Machine: 2 shared CPU cores, "
        f"torch {torch.__version__}, bf16 autocast. Rows marked 'not run' did not fit in the session.", "",
    ]
    body = [line for data in sets for line in table(data.name, all_rows, work)]
    extra = notes.read_text().splitlines() if notes.is_file() else []
    out.write_text("\n".join([*header, *body, *extra]) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--sets", default="gtsrb32,caltech101")
    parser.add_argument("--rows", default=None, help="comma-separated row names (default: all, in order)")
    parser.add_argument("--budget", type=float, default=4.0, help="minutes for each comparison row")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "runs")
    parser.add_argument("--notes", type=Path, default=REPO / "benchmarks" / "results_notes.md")
    parser.add_argument("--results", type=Path, default=REPO / "docs" / "RESULTS.md")
    parser.add_argument("--report-only", action="store_true", help="only rewrite RESULTS.md from the cache")
    parser.add_argument("--no-seed", dest="seed", action="store_false",
                        help="do not rebuild missing cache entries from the rows of the existing --results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sets = [args.data_root / name for name in args.sets.split(",")]
    all_rows = rows(args.budget)
    wanted = set(args.rows.split(",")) if args.rows else {r.name for r in all_rows}
    args.work.mkdir(parents=True, exist_ok=True)
    if args.seed:
        seed_cache(args.results, sets, all_rows, args.work)
    for row in (r for r in all_rows if r.name in wanted and not args.report_only):
        for data in sets:
            cached = args.work / f"{data.name}__{row.name}.json"
            if cached.is_file():
                continue
            LOG.info("running %s on %s", row.name, data.name)
            try:
                record = run_row(row, data, args.work)
            except subprocess.CalledProcessError as exc:
                LOG.error("%s on %s failed:\n%s", row.name, data.name, exc.stderr[-3000:])
                continue
            cached.write_text(json.dumps(record, indent=2))
            LOG.info("%s on %s: %s", row.name, data.name, record["test"])
            write_results(sets, all_rows, args.work, args.notes, args.results)
    write_results(sets, all_rows, args.work, args.notes, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
