"""``python -m fastgan.report RUN_DIR``: (re)writes RUN_DIR/report.html, a page to look at instead of logs.

The page shows the resolved config, the loss curves (a PNG drawn with matplotlib, the optional
``fastgan[report]`` extra; without it a table of the logged values), the sample grids over time newest
first, the checkpoints and, when the run has one, the metrics history (``metrics.jsonl``). The trainer
rewrites it with every sample grid; every file is replaced atomically, so a browser never sees half a page.
Links are relative, so the run directory can be copied or served as it is.

While the run trains, the page reloads itself every REFRESH_SECONDS (a meta refresh, no script); the
trainer's last rewrite, when it ends, leaves it still. ``python -m fastgan.report`` tells a live run by the
process named in its lock file.
"""

from __future__ import annotations

import fcntl
import html
import json
import os
import sys
from pathlib import Path

from .errors import UserError
from .files import atomic_write
from .metrics.evaluation import read_records
from .train.cli import OneLineParser, run

PROG = "fastgan.report"
REPORT = "report.html"
LOSS_PLOT = "losses.png"
MAX_TABLE_ROWS = 200  # without matplotlib: the newest records of the loss log
REFRESH_SECONDS = 30  # a live run's page reloads this often
LOCK = "lock"  # the run directory's lock file (fastgan.train): the PID of its last holder


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


def training_now(run_dir: Path) -> bool:
    """Whether a trainer holds ``run_dir``'s lock. The lock file keeps the PID of its last holder: a process
    that is gone holds nothing (decided without touching the lock); a live one, or a PID reused, is asked by
    a shared flock probe, which fails while the trainer's exclusive lock is held."""
    path = run_dir / LOCK
    try:
        pid = int(path.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError) as e:
        if not isinstance(e, PermissionError):  # alive but another user's: probe it below
            return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's shared lock at once
    return False


def _legend(model: str) -> str:
    from .models import REGISTRY

    definition = REGISTRY.get(model)
    return getattr(definition, "grid_legend", "") if definition is not None else ""


def render(run_dir: Path, plotted: bool, live: bool = False) -> str:
    """The report page of ``run_dir`` as HTML (links relative to run_dir); ``live``: it reloads itself every
    REFRESH_SECONDS."""
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    records = read_records(run_dir / "losses.jsonl")
    metrics = read_records(run_dir / "metrics.jsonl")
    samples = sorted((run_dir / "samples").glob("step-*.png"), reverse=True)
    checkpoints = sorted(run_dir.glob("checkpoint-*.pt"), reverse=True)
    title = f"fastgan {config.get('model', '')} run: {run_dir.name}"
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if live:
        parts.append(f"<p><em>Training: this page reloads every {REFRESH_SECONDS} s.</em></p>")
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
    legend = _legend(config.get("model", ""))
    if legend:
        parts.append(f'<p class="legend">In each grid, {html.escape(legend)}.</p>')
    if not samples:
        parts.append("<p>No sample grids yet.</p>")
    for path in samples:
        rel = path.relative_to(run_dir).as_posix()
        caption = path.stem + (f": {legend}" if legend else "")
        parts.append(f'<figure><img src="{html.escape(rel)}" alt="{html.escape(caption)}">'
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
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if live else ""
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">{refresh}<title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_report(run_dir: str | Path, live: bool | None = None) -> Path:
    """Rewrites run_dir/report.html (and its loss plot) from the files the trainer wrote. ``live``: whether
    the page reloads itself (the trainer says so while it trains, and not in its last rewrite); None asks
    training_now()."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir}: not a fastgan run directory (no config.json)")
    records = read_records(run_dir / "losses.jsonl")
    plotted = bool(records) and plot_losses(records, run_dir / LOSS_PLOT)
    page = render(run_dir, plotted, training_now(run_dir) if live is None else live)
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
