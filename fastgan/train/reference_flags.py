"""Flags of junyanz/pytorch-CycleGAN-and-pix2pix (``train.py``/``test.py``) that a user coming from it types,
each answered by one line naming fastgan's equivalent (exit 2) instead of argparse's "unrecognized arguments".

No aliases: each option keeps one spelling, so --help, config.json and the docs show one name, and the
reference's flags whose meaning differs (--name and --checkpoints_dir against one --out, --continue_train
against --resume and --init-from) would be wrong as plain aliases. A hint costs one retry.
"""

from __future__ import annotations

# The reference's flag -> what to use in fastgan (and why, where it is not a rename).
REFERENCE_FLAGS = {
    "--dataroot": "--data DIR (cyclegan: a folder with trainA/ trainB/; pix2pix: train/ of A|B files)",
    "--name": "--out runs/NAME: the run directory, which holds the checkpoints, samples and logs",
    "--checkpoints_dir": "--out DIR: each run has one directory, which holds its checkpoints",
    "--load_size": "--load-size",
    "--crop_size": "--image-size (the side of the random crop)",
    "--continue_train": "--resume auto (continues the run in --out where it stopped: same data, optimisers and "
                        "schedule); to start a new run from saved weights, on other data too: --init-from CHECKPOINT",
    "--epoch_count": "--resume auto, which continues at the checkpoint's own iteration, or --init-from CHECKPOINT, "
                     "which starts a new schedule at epoch 0 (set its length with --epochs and --epochs-decay)",
    "--gpu_ids": "--device cuda:N (or --device cpu for -1); several GPUs: torchrun --nproc-per-node N -m "
                 "fastgan.train ...",
    "--netG": "the generator its model fixes: cyclegan's ResNet (--n-blocks 9 = resnet_9blocks, 6 = "
              "resnet_6blocks), pix2pix's U-Net (--unet-depth 8 = unet_256, 7 = unet_128)",
    "--no_flip": "--no-flip",
    "--n_epochs": "--epochs",
    "--n_epochs_decay": "--epochs-decay",
    "--gan_mode": "--gan-loss",
    "--lambda_A": "--lambda-cycle (one weight for both cycles)",
    "--lambda_B": "--lambda-cycle (one weight for both cycles)",
    "--print_freq": "--log-every (in iterations)",
    "--save_latest_freq": "--save-every (in iterations)",
    "--save_epoch_freq": "--save-every (in iterations)",
    "--display_freq": "--sample-every (in iterations); the run's report.html shows the grids",
    "--display_id": "none: report.html in --out shows the run instead of visdom",
    "--num_threads": "--workers",
    "--results_dir": "python -m fastgan.translate RUN_DIR INPUT --out DIR",
    "--input_nc": "none: the channels come from the data",
    "--output_nc": "none: the channels come from the data",
}

# The reference's --model values -> fastgan's sub-command.
REFERENCE_MODELS = {"cycle_gan": "cyclegan", "pix2pix": "pix2pix"}


def reference_flag_hint(argv: list[str], known: set[str]) -> str | None:
    """The error line for the first flag in ``argv`` that fastgan does not know (``known``: every option
    string of the parser) but the reference does, or that is a known flag spelled with underscores; else
    None (argparse then reports what remains)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if not arg.startswith("--"):
            continue
        flag = arg.split("=", 1)[0]
        if flag in known:
            continue
        if flag == "--model":
            value = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            name = REFERENCE_MODELS.get(value, value or "MODEL")
            return f"--model: the model is the first argument: python -m fastgan.train {name} [flags]"
        if flag in REFERENCE_FLAGS:
            return f"{flag} (pytorch-CycleGAN-and-pix2pix): fastgan's is {REFERENCE_FLAGS[flag]}"
        dashed = flag.replace("_", "-")
        if dashed != flag and dashed in known:
            return f"{flag}: fastgan spells it {dashed}"
    return None
