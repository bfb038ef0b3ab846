"""pytorch-CycleGAN-and-pix2pix's flags on fastgan.train: one line naming fastgan's equivalent, exit 2."""

import pytest

from fastgan.train.__main__ import main
from fastgan.train.reference_flags import REFERENCE_FLAGS


def error_line(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastgan.train: error: ") and "Traceback" not in err, err
    return lines[0].removeprefix("fastgan.train: error: ")


@pytest.mark.parametrize("flag, names", [
    ("--dataroot", "--data DIR"),
    ("--name", "--out runs/NAME"),
    ("--checkpoints_dir", "--out DIR"),
    ("--load_size", "--load-size"),
    ("--crop_size", "--image-size"),
    ("--continue_train", "--resume auto"),
    ("--epoch_count", "--resume auto, which continues at the checkpoint's own iteration, or --init-from CHECKPOINT"),
    ("--gpu_ids", "--device cuda:N"),
    ("--netG", "the generator its model fixes: cyclegan's ResNet (--n-blocks 9 = resnet_9blocks"),
    ("--no_flip", "--no-flip"),
])
def test_each_reference_flag_names_fastgans(capsys, flag, names):
    line = error_line(capsys, "cyclegan", "--data", "synthetic", flag, "1")
    assert line.startswith(f"{flag} (pytorch-CycleGAN-and-pix2pix): fastgan's is ") and names in line


def test_with_the_value_glued_and_before_the_model(capsys):
    assert error_line(capsys, "--dataroot=./datasets/horse2zebra", "cyclegan").startswith("--dataroot (")
    # The reference names the model with --model; fastgan takes it as the first argument.
    assert error_line(capsys, "--model", "cycle_gan") == \
        "--model: the model is the first argument: python -m fastgan.train cyclegan [flags]"


def test_a_known_flag_spelled_with_underscores(capsys):
    assert error_line(capsys, "dcgan", "--batch_size", "4") == "--batch_size: fastgan spells it --batch-size"
    assert "unrecognized arguments: --bogus" in error_line(capsys, "dcgan", "--bogus")


def test_hints_name_flags_that_exist(capsys):
    from fastgan.train.__main__ import build_parser, option_strings

    known = option_strings(build_parser())
    for hint in REFERENCE_FLAGS.values():
        for word in hint.replace("(", " ").replace(")", " ").replace(",", " ").replace(":", " ").split():
            # --no-flip comes with issue 23's data piece; --nproc-per-node is torchrun's.
            if word.startswith("--") and word not in ("--nproc-per-node", "--no-flip"):
                assert word in known, (word, hint)


def help_of(capsys, model: str) -> str:
    with pytest.raises(SystemExit):
        main([model, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_out_and_resume_help_say_their_defaults_and_a_run_directory(capsys):
    text = help_of(capsys, "dcgan")
    assert "--out OUT the run directory (default: runs/<model>)" in text and '"" = runs' not in text
    assert "auto (the newest checkpoint in --out) | RUN_DIR | RUN_DIR/checkpoint-N.pt (default: a new run)" in text


def test_data_help_says_what_a_folder_holds(capsys):
    assert "a folder holding trainA/ and trainB/" in help_of(capsys, "cyclegan")
    pix2pix = help_of(capsys, "pix2pix")
    assert "--data DATA fashion-edges | synthetic | a folder holding train/ of side-by-side A|B images" in pix2pix
    assert "(default: fashion-edges)" in pix2pix and "None =" not in pix2pix
