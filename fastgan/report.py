"""``python -m fastgan.report RUN_DIR``: (re)writes RUN_DIR/report.html, a page to look at instead of logs.

The page shows the resolved config, the loss curves (a PNG drawn with matplotlib, the optional
``fastgan[report]`` extra; without it a table of the logged values), the sample grids over time newest
first, the checkpoints and, when the run has one, the metrics history (``metrics.jsonl``). The trainer
rewrites it with every sample grid; every file is replaced atomically, so a browser never sees half a page.
Links are relative, so the run directory can be copied or served as it is.
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path

from .errors import UserError
from .metrics.evaluation import read_records
from .train.cli import OneLineParser, run
from .train.files import atomic_write

PROG = "fastgan.report"
REPORT = "report.html"
LOSS_PLOT = "losses.png"
MAX_TABLE_ROWS = 200  # without matplotlib: the newest records of the loss log


def _loss_keys(records: list[dict]) -> list[str]:
    return sorted({k for r in records for k in r if "/" in k})


def plot_losses(records: list[dict], path: Path) -> bool:
    """Draws one panel per phase (D, G) of the logged losses into ``path``; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on training machines
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    keys = _loss_keys(records)
    phases = sorted({k.split("/")[0] for k in keys})
    fig, axes = plt.subplots(len(phases), 1, figsize=(8, 2.6 * len(phases)), sharex=True, squeeze=False)
    for ax, phase in zip(axes[:, 0], phases):
        for key in (k for k in keys if k.startswith(phase + "/")):
            points = [(r["step"], r[key]) for r in records if key in r]
            ax.plot(*zip(*points), label=key.split("/", 1)[1], linewidth=1.2)
        ax.set_ylabel(f"{phase} loss")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return True


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))


def render(run_dir: Path, plotted: bool) -> str:
    """The report page of ``run_dir`` as HTML (links relative to run_dir)."""
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    records = read_records(run_dir / "losses.jsonl")
    metrics = read_records(run_dir / "metrics.jsonl")
    samples = sorted((run_dir / "samples").glob("step-*.png"), reverse=True)
    checkpoints = sorted(run_dir.glob("checkpoint-*.pt"), reverse=True)
    title = f"fastgan {config.get('model', '')} run: {run_dir.name}"
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if records:
        last = records[-1]
        parts.append(f"<p>Last logged step {last['step']} (epoch {last.get('epoch', '?')}), "
                     f"learning rate {_fmt(last.get('lr'))}.</p>")
    parts.append("<h2>Losses</h2>")
    keys = _loss_keys(records)
    if not records:
        parts.append("<p>No losses logged yet.</p>")
    elif plotted:
        parts.append(f'<img class="plot" src="{LOSS_PLOT}" alt="loss curves">')
    else:
        parts.append("<p>Install <code>fastgan[report]</code> (matplotlib) for a plot; the newest logged "
                     "values:</p>")
        rows = [[r["step"], *(r.get(k) for k in keys)] for r in records[-MAX_TABLE_ROWS:]][::-1]
        parts.append(_table(["step", *keys], rows))
    if metrics:
        metric_keys = sorted({k for m in metrics for k in m if k != "step"})
        parts.append("<h2>Metrics</h2>")
        parts.append(_table(["step", *metric_keys], [[m.get("step"), *(m.get(k) for k in metric_keys)]
                                                      for m in reversed(metrics)]))
    parts.append("<h2>Samples</h2>")
    if not samples:
        parts.append("<p>No sample grids yet.</p>")
    for path in samples:
        rel = path.relative_to(run_dir).as_posix()
        parts.append(f'<figure><img src="{html.escape(rel)}" alt="{html.escape(path.stem)}">'
                     f"<figcaption>{html.escape(path.stem)}</figcaption></figure>")
    parts.append("<h2>Checkpoints</h2>")
    parts.append("<ul>" + "".join(f'<li><a href="{html.escape(p.name)}">{html.escape(p.name)}</a> '
                                  f"({p.stat().st_size / 2**20:.1f} MiB)</li>" for p in checkpoints) + "</ul>"
                 if checkpoints else "<p>No checkpoints yet.</p>")
    parts.append("<h2>Config</h2>")
    parts.append(_table(["field", "value"], [[k, v] for k, v in config.items()]))
    style = ("body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;font-size:.85em}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}figure{display:inline-block;margin:.5em}"
             "figure img{max-width:32em;image-rendering:pixelated}img.plot{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_report(run_dir: str | Path) -> Path:
    """Rewrites run_dir/report.html (and its loss plot) from the files the trainer wrote."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir}: not a fastgan run directory (no config.json)")
    records = read_records(run_dir / "losses.jsonl")
    plotted = bool(records) and plot_losses(records, run_dir / LOSS_PLOT)
    page = render(run_dir, plotted)
    path = run_dir / REPORT
    atomic_write(path, lambda tmp: tmp.write_text(page))
    return path


def _main(argv) -> int:
    parser = OneLineParser(PROG, description="Rebuild a run directory's report.html.")
    parser.add_argument("run_dir", help="a directory written by python -m fastgan.train")
    args = parser.parse_args(argv)
    print(f"{PROG}: wrote {write_report(args.run_dir)}")
    return 0


def main(argv=None) -> int:
    return run(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
