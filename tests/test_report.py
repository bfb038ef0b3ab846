"""report.html: written by every run, rebuilt by `python -m fastgan.report`, valid HTML whose every linked
file exists, with and without matplotlib."""

import builtins
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fastgan.report import LOSS_PLOT, REPORT, main, write_report
from fastgan.train.__main__ import main as train_main

TINY = ["--device", "cpu", "--data", "synthetic", "--batch-size", "4", "--z-dim=8", "--ngf=4", "--ndf=4"]


class _Links(HTMLParser):
    """Collects src/href targets and checks that every opened tag is closed (void tags aside)."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.links, self.open, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("src", "href")]
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open.pop() == tag, f"</{tag}> closes nothing open"

    def handle_data(self, data):
        self.text.append(data)


def parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text())
    parser.close()
    assert parser.open == [], f"unclosed tags: {parser.open}"
    return parser


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    assert train_main(["dcgan", *TINY, "--iters", "4", "--sample-every", "2", "--log-every", "1",
                       "--out", str(out)]) == 0
    return out


def test_every_run_has_a_report_whose_links_exist(run_dir):
    page = run_dir / REPORT
    parser = parse(page)
    text = " ".join(parser.text)
    assert "dcgan" in text and "checkpoint-00000004.pt" in text and "Last logged step 4" in text
    samples = [link for link in parser.links if link.startswith("samples/")]
    assert samples == ["samples/step-00000004.png", "samples/step-00000002.png"]  # newest first
    for link in parser.links:
        assert (run_dir / link).is_file(), link


def test_without_matplotlib_the_losses_are_a_table(run_dir, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / LOSS_PLOT).unlink(missing_ok=True)
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    parser = parse(write_report(copy))
    assert LOSS_PLOT not in parser.links and not (copy / LOSS_PLOT).exists()
    text = " ".join(parser.text)
    logged = [json.loads(line) for line in (copy / "losses.jsonl").read_text().splitlines()]
    assert "fastgan[report]" in text and f"{logged[-1]['D/total']:.4g}" in text


def test_with_matplotlib_the_losses_are_a_plot(run_dir):
    pytest.importorskip("matplotlib")
    parser = parse(write_report(run_dir))
    assert LOSS_PLOT in parser.links and (run_dir / LOSS_PLOT).stat().st_size > 1000


def test_metrics_history_is_shown(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "metrics.jsonl").write_text(json.dumps({"step": 4, "fid": 123.25}) + "\n")
    text = " ".join(parse(write_report(copy)).text)
    assert "Metrics" in text and "123.2" in text


def test_cli_rebuilds_and_refuses_bad_input(run_dir, tmp_path, capsys):
    (run_dir / REPORT).unlink()
    assert main([str(run_dir)]) == 0 and (run_dir / REPORT).is_file()
    for target, words in ((tmp_path / "nowhere", "no such run directory"), (tmp_path, "no config.json")):
        with pytest.raises(SystemExit) as exit_info:
            main([str(target)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and words in err


def test_report_in_a_headless_browser(run_dir, tmp_path):
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("no Chromium (Debian package chromium): the HTML and link checks above stand in")
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,1600",
                    (run_dir / REPORT).as_uri()], check=True, timeout=120, capture_output=True)
    assert shot.stat().st_size > 10_000


def test_the_page_reloads_itself_only_while_the_run_trains(run_dir, tmp_path):
    import fcntl
    import os

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    refresh = '<meta http-equiv="refresh"'
    # The finished run's last rewrite leaves the page still.
    assert refresh not in (run_dir / REPORT).read_text()
    assert refresh in write_report(copy, live=True).read_text()
    (copy / "lock").write_text(f"{os.getpid()}\n")
    with open(copy / "lock") as held:  # what a live trainer holds (fastgan's run lock: an exclusive flock)
        fcntl.flock(held, fcntl.LOCK_EX)
        assert refresh in write_report(copy).read_text()
    assert refresh not in write_report(copy).read_text()  # this process is alive but holds nothing now
    dead = subprocess.Popen(["true"])
    dead.wait()
    (copy / "lock").write_text(f"{dead.pid}\n")  # its trainer has ended
    assert refresh not in write_report(copy).read_text()


def test_the_page_says_what_the_grid_rows_show(run_dir):
    text = " ".join(parse(run_dir / REPORT).text)
    assert "In each grid, the top 8 rows are real training images, the rows below generated from fixed noise." in text
