"""The one typed training configuration. Every field is commented; the CLI is generated from it
(fastgan/train/__main__.py: one sub-command per registered model, showing the shared fields and that
model's options with its recipe's defaults); the resolved config is printed at start and saved beside
checkpoints."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    """None means "the model's recipe" (fastgan/models/<model>.py, ``Model.recipe``/``Model.resolve``);
    resolve_config fills it in, so the printed and saved config shows real values only. Fields below
    "model options" are read only by the models that list them in ``Model.options``."""

    model: str = "dcgan"  # a name in fastgan.models.REGISTRY
    # --- data ---
    data: str = ""  # fashion-mnist | fashion-unpaired | synthetic | a directory ("" = the model's built-in set)
    image_size: int | None = None  # side of the training images
    loader: str = "auto"  # auto | device | torch | dali
    workers: int = 2  # torch DataLoader worker processes (folders)
    strict: bool = False  # stop at the first unreadable image instead of skipping it with a warning
    # --- schedule ---
    epochs: int | None = None  # epochs at constant learning rate
    epochs_decay: int | None = None  # further epochs with the learning rate decaying linearly to zero
    iters: int = 0  # stop after this many iterations in total (0 = run the epochs)
    batch_size: int | None = None  # images per step (per domain)
    lr: float | None = None  # Adam learning rate for G and D
    beta1: float | None = None  # Adam beta1
    beta2: float | None = None  # Adam beta2
    d_steps: int = 1  # discriminator updates per iteration
    g_steps: int = 1  # generator updates per iteration
    gan_loss: str | None = None  # adversarial loss: vanilla (BCE with logits) | lsgan (least squares)
    # --- model options ---
    z_dim: int | None = None  # latent size
    hidden: int | None = None  # MLP hidden width (both layers of G and D)
    ngf: int | None = None  # generator base width
    ndf: int | None = None  # discriminator base width
    domains: str | None = None  # fashion-unpaired: the Fashion-MNIST classes used as domains A,B
    load_size: int | None = None  # resize to this square before the random crop
    n_blocks: int | None = None  # residual blocks of the ResNet generator
    upsample: str | None = None  # generator upsampling: deconv (transposed conv) | resize (nearest + conv)
    lambda_cycle: float | None = None  # cycle-consistency L1 weight
    lambda_identity: float | None = None  # identity L1 weight, as a fraction of lambda_cycle
    pool_size: int | None = None  # image pool per domain (0 disables it)
    direction: str | None = None  # paired data: AtoB learns A -> B, BtoA learns B -> A
    norm: str | None = None  # normalisation of the U-Net and its PatchGAN: batch | instance
    unet_depth: int | None = None  # U-Net down-sampling levels (8 = unet_256); image sides are multiples of 2^depth
    lambda_l1: float | None = None  # weight of the L1 distance between the generator's output and the target
    preprocess: str | None = None  # folders: resize_and_crop | crop | scale_width | scale_width_and_crop | none
    flip: bool | None = None  # random horizontal flips of the training images (--no-flip: none)
    channels: int | None = None  # image channels: 3 (RGB; grey images replicated) | 1 (grey; RGB images by luma)
    # --- engine ---
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # autocast mixed precision (losses stay fp32)
    amp_dtype: str = "bf16"  # bf16 | fp16 (fp16 uses one GradScaler per optimiser)
    impl: str = "auto"  # fastgan.ops implementation: auto | ref
    channels_last: bool | None = None  # channels-last (NHWC) memory format (default: on for conv models on CUDA)
    cuda_graphs: bool = False  # capture each training phase in a CUDA graph
    compile: bool = False  # torch.compile the models (for comparison)
    deterministic: bool = False  # torch.use_deterministic_algorithms (exact resume tests)
    # --- torchrun (data-parallel; fastgan/train/distributed.py) ---
    sync_bn: bool = False  # BatchNorm statistics over all processes' batches (off: per process, as the reference code)
    dist_timeout: int = 300  # seconds a collective waits for the other processes before the job fails
    # --- outputs ---
    out: str = ""  # the run directory (default: runs/<model>)
    resume: str = ""  # auto (the newest checkpoint in --out) | RUN_DIR | RUN_DIR/checkpoint-N.pt (default: a new run)
    init_from: str = ""  # a new run from a checkpoint's weights (file or run directory); fresh optimisers and schedule
    init_nets: str = ""  # with --init-from: the networks it takes, e.g. G_A,G_B ("" = all)
    sample_every: int = 500  # iterations between sample grids (0 = only at the end)
    save_every: int = 1000  # iterations between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept (--resume auto falls back to an older one if one is damaged)
    log_every: int = 50  # iterations between loss reads (the only host syncs of the loop)
    eval_every: int = 0  # iterations between evaluations appended to metrics.jsonl, best.pt by FID (0 = none)
    eval_n: int = 5000  # generated images per evaluation (FID needs more than the feature dimension)
    eval_feature: str = "inception"  # inception (standard FID; see --inception-weights) | classifier:PATH
    inception_weights: str = ""  # Inception-v3 weights file of --eval-every's FID ("" = $FASTGAN_INCEPTION_WEIGHTS)
    tensorboard: bool = False  # also write TensorBoard scalars (needs the tensorboard extra)
    seed: int = 0  # seeds the weights, the training noise and the epoch order
    dry_run: bool = False  # run one iteration and stop (smoke tests)

    def to_dict(self, model=None) -> dict:
        """The fields this config's model uses (shared ones and its own options), as saved and printed.
        ``model``: its definition, when the caller has it (else looked up by name)."""
        if model is None:
            from ..models import get_model

            model = get_model(self.model)
        own = set(model.options)
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in MODEL_OPTIONS or k in own}


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainConfig))


# The fields that belong to some models only (each model lists its own in Model.options).
MODEL_OPTIONS = ("z_dim", "hidden", "ngf", "ndf", "domains", "load_size", "n_blocks", "upsample", "lambda_cycle",
                 "lambda_identity", "pool_size", "direction", "norm", "unet_depth", "lambda_l1", "preprocess", "flip",
                 "channels")

__all__ = ["MODEL_OPTIONS", "TrainConfig", "config_fields", "field"]
