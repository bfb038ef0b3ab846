"""``python -m fastgan.evaluate``: FID, KID, Inception Score and precision/recall of a checkpoint, computed by
torch-fidelity (``pip install 'fastgan[metrics]'``), offline.

    python -m fastgan.evaluate CHECKPOINT|RUN_DIR [--metrics fid,kid,is,prc] [--n 10000]
        [--feature inception|inception:PATH|classifier:PATH] [--inception-weights PATH] [--batch-size N]
        [--split train|test] [--seed S] [--device auto] [--out metrics.json]
    python -m fastgan.evaluate train-classifier [--data fashion-mnist|IDX_DIR] --out classifier.pt [--epochs 2]

The first prints a table and writes metrics.json (beside the checkpoint unless --out says otherwise). The
second trains the small CNN whose features make FID-FMNIST (--feature classifier:classifier.pt).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .data import DataRequest
from .data.datasets import data_origin, resolve_data
from .errors import UserError
from .files import atomic_write
from .metrics import classifier as clf
from .metrics.evaluation import METRICS, Settings, evaluate, parse_metrics
from .metrics.spaces import ENV_INCEPTION, FeatureSpace, feature_space
from .models import get_model
from .outputs import check_output_file, is_classifier, is_metrics_record
from .train.checkpoint import latest_checkpoint, load_checkpoint
from .train.cli import OneLineParser, run
from .train.loop import resolve_device
from .train.tasks import nets_from_checkpoint

PROG = "fastgan.evaluate"
TRAIN_CLASSIFIER = "train-classifier"
ROWS = (  # (result key, label; "*" is replaced by the feature space's suffix, e.g. FID-FMNIST)
    ("fid", "FID*"), ("kid", "KID*"), ("is", "IS*"), ("precision", "precision"), ("recall", "recall"),
    ("f_score", "F-score"), ("class_tv", "class TV"), ("conditioning_accuracy", "conditioning acc."),
)


def parse_args(argv):
    parser = OneLineParser(PROG, description="Evaluate a checkpoint with FID/KID/IS/precision-recall "
                                             f"(or: python -m {PROG} {TRAIN_CLASSIFIER} --help).")
    parser.add_argument("checkpoint", help="checkpoint-*.pt written by fastgan.train, or its run directory")
    parser.add_argument("--metrics", default="fid,kid,is", help=f"comma-separated: {', '.join(METRICS)}")
    parser.add_argument("--n", type=int, default=10000,
                        help="generated images (translators: at most the test images of each source domain)")
    parser.add_argument("--feature", default="inception",
                        help="inception (standard FID; weights from --inception-weights), inception:PATH, or "
                             "classifier:PATH (a file from train-classifier: FID-FMNIST)")
    parser.add_argument("--inception-weights", default=None,
                        help=f"the Inception-v3 FID weights (pt_inception-2015-12-05); default ${ENV_INCEPTION}")
    parser.add_argument("--batch-size", type=int, default=200, help="images per generator / feature call")
    parser.add_argument("--split", choices=("train", "test"), default=None,
                        help="real images compared with: default train for generators, test for translators")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (the images of fastgan.generate --seed)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--out", default=None, help="metrics.json path (default: beside the checkpoint)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out that is not a metrics file (a run's own files never)")
    return parser.parse_args(argv)


def parse_classifier_args(argv):
    parser = OneLineParser(f"{PROG} {TRAIN_CLASSIFIER}",
                           description="Train the CNN classifier whose features make FID-FMNIST.")
    parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist or an MNIST-family IDX directory")
    parser.add_argument("--out", required=True, help="classifier file to write (e.g. classifier.pt)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out that is not a classifier file (a run's own files never)")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the training split")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights and the epoch order")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return parser.parse_args(argv)


CLASSIFIER_DATA = ("fashion-mnist", "idx-dir", "synthetic")  # in-memory labelled sets (data_origin names)


def _labelled_split(data: str, split: str):
    request = DataRequest(kind="labelled", data=data, batch_size=1, model=TRAIN_CLASSIFIER)
    if data_origin(request) not in CLASSIFIER_DATA:
        raise UserError(f"--data {data}: {TRAIN_CLASSIFIER} reads fashion-mnist or an MNIST-family IDX "
                        "directory, not an image folder")
    spec = resolve_data(request, split)
    return spec, spec.sources["real"]


def train_classifier_main(argv) -> int:
    args = parse_classifier_args(argv)
    out = check_output_file(args.out, own_type=is_classifier, what="a classifier file", inputs=[args.data],
                            overwrite=args.overwrite)
    device = resolve_device(args.device)
    spec, train = _labelled_split(args.data, "train")
    _, test = _labelled_split(args.data, "test")
    images, labels = train.images.to(device), train.labels.to(device)
    steps = args.epochs * (len(train) // max(1, args.batch_size))
    bar = tqdm(total=max(steps, 0), unit="step", dynamic_ncols=True, file=sys.stderr, disable=None)

    def progress(step, total, loss):
        bar.update(1)
        if step % 50 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)  # sync: the shown loss, every 50 steps

    start = time.perf_counter()
    try:
        net = clf.train_classifier(images, labels, spec.num_classes, epochs=args.epochs,
                                   batch_size=args.batch_size, lr=args.lr, seed=args.seed, progress=progress)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    acc = clf.accuracy(net, test.images.to(device), test.labels.to(device))
    classes = _class_names(args.data, spec.num_classes)
    clf.save_classifier(net, out, classes=classes, data=args.data, test_accuracy=acc, train_seconds=seconds,
                        epochs=args.epochs)
    threads = f"{torch.get_num_threads()} CPU threads" if device.type == "cpu" else str(device)
    print(f"{PROG}: classifier of {spec.name} ({spec.num_classes} classes): test accuracy {acc:.2%} after "
          f"{args.epochs} epochs in {seconds:.0f} s ({threads}) -> {out}")
    return 0


def _class_names(data: str, num_classes: int) -> list[str]:
    from .data.datasets import FASHION_CLASSES
    return list(FASHION_CLASSES) if data == "fashion-mnist" else [str(k) for k in range(num_classes)]


def _format(result: dict, key: str) -> str:
    value = result.get(key)
    if value is None:
        return "-"
    if key in ("kid", "is"):
        return f"{value:.4g} ± {result.get(key + '_std', 0.0):.2g}"
    return f"{value:.4g}"


def table(results: dict, space: FeatureSpace) -> str:
    groups = list(results)
    rows = [(label.replace("*", space.suffix), [_format(results[g], key) for g in groups])
            for key, label in ROWS if any(key in results[g] for g in groups)]
    header = ("metric", [g if len(groups) > 1 else "value" for g in groups])
    width = max(len(r[0]) for r in [header, *rows])
    cols = [max(len(header[1][i]), *(len(r[1][i]) for r in rows)) for i in range(len(groups))]
    lines = [f"{name:<{width}}  " + "  ".join(f"{v:>{c}}" for v, c in zip(values, cols))
             for name, values in [header, *rows]]
    for g in groups:
        hist = results[g].get("class_histogram")
        if hist is not None:
            names = space.classifier.classes if space.classifier else range(len(hist))
            lines.append("class histogram: " + ", ".join(f"{c} {p:.1%}" for c, p in zip(names, hist)))
    return "\n".join(lines)


def _main(argv) -> int:
    if argv and argv[0] == TRAIN_CLASSIFIER:
        return train_classifier_main(argv[1:])
    args = parse_args(argv)
    settings = Settings(metrics=parse_metrics(args.metrics), n=args.n, batch_size=args.batch_size,
                        split=args.split or "", seed=args.seed)
    if args.n < 1:
        raise UserError(f"--n {args.n}: must be at least 1")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    path = Path(args.checkpoint)
    out = Path(args.out) if args.out is not None else (path if path.is_dir() else path.parent) / "metrics.json"
    # Before the hours of evaluation, not after them.
    check_output_file(out if args.out is None else args.out, own_type=is_metrics_record,
                      what="a metrics file of fastgan.evaluate", inputs=[path], overwrite=args.overwrite)
    device = resolve_device(args.device)
    space = feature_space(args.feature, args.inception_weights)
    ckpt = load_checkpoint(path, map_location=device)
    checkpoint = latest_checkpoint(path) if path.is_dir() else path
    model = get_model(ckpt["model"])
    wanted = ["G"] if model.inference == "generate" else sorted(set(model.translators.values()))
    names = [name for name in wanted if name in ckpt.get("nets", {})]
    if not names:
        raise UserError(f"checkpoint {checkpoint}: holds no generator ({' or '.join(wanted)}) to evaluate")
    nets = nets_from_checkpoint(ckpt, names, device)
    results, notes = evaluate(model, nets, ckpt["config"], space, settings, device)
    for note in notes:
        print(f"{PROG}: {note}", file=sys.stderr)
    record = {"checkpoint": str(checkpoint), "model": model.name, "step": ckpt.get("step"),
              "feature": space.describe(), "feature_space": space.kind + space.suffix,
              "metrics": list(settings.metrics), "seed": settings.seed, "results": results}
    atomic_write(out, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    print(f"{PROG}: {checkpoint} ({model.name}, step {ckpt.get('step')}), {space.describe()}")
    for group, result in results.items():
        what = f"{group}: " if len(results) > 1 else ""
        print(f"  {what}{result['n']} images vs {result.get('reference') or '-'}")
    print(table(results, space))
    print(f"{PROG}: wrote {out}")
    return 0


def main(argv=None) -> int:
    return run(PROG, _main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
