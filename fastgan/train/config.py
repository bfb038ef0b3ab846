"""The one typed training configuration. Every default is commented; the CLI is generated from it
(fastgan/train/__main__.py), the resolved config is printed at start and saved beside checkpoints."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

MODELS = ("gan", "dcgan", "cgan", "cyclegan")


@dataclass
class TrainConfig:
    model: str = "dcgan"  # gan | dcgan | cgan | cyclegan
    # --- data ---
    data: str = ""  # "" = model default (fashion-mnist; cyclegan: fashion-unpaired), synthetic, or a directory
    domains: str = "7,9"  # fashion-unpaired: Fashion-MNIST classes used as domains A,B (7 sneaker, 9 ankle boot)
    image_size: int = 0  # 0 = model default: 28 (gan/dcgan/cgan on IDX), 64 (dcgan on folders), 256 (cyclegan)
    load_size: int = 0  # 0 = image_size * 286 / 256 (cyclegan resize before the random crop)
    loader: str = "auto"  # auto | device | torch | dali
    workers: int = 2  # torch DataLoader worker processes (folders)
    strict: bool = False  # stop at the first unreadable image instead of skipping it with a warning
    # --- schedule ---
    epochs: int = 5  # epochs at constant learning rate
    epochs_decay: int = 0  # further epochs with the learning rate decaying linearly to zero
    iters: int = 0  # stop after this many iterations in total (0 = run the epochs)
    batch_size: int = 64
    lr: float = 2e-4  # Adam learning rate for G and D
    beta1: float = 0.5
    beta2: float = 0.999
    d_steps: int = 1  # discriminator updates per iteration
    g_steps: int = 1  # generator updates per iteration
    # --- architecture ---
    z_dim: int = 100  # latent size (gan, dcgan, cgan)
    hidden: int = 256  # MLP GAN hidden width
    ngf: int = 64  # generator base width (conv models)
    ndf: int = 64  # discriminator base width (conv models)
    num_classes: int = 10  # cgan
    n_blocks: int = 0  # cyclegan residual blocks; 0 = 9 at 256^2, 6 at <= 128^2
    upsample: str = "deconv"  # cyclegan generator upsampling: deconv (transposed conv) | resize (nearest + conv)
    gan_loss: str = ""  # "" = model default: lsgan for cyclegan, vanilla (BCE with logits) otherwise
    lambda_cycle: float = 10.0  # cyclegan cycle-consistency L1 weight
    lambda_identity: float = 0.5  # cyclegan identity L1 weight, as a fraction of lambda_cycle
    pool_size: int = 50  # cyclegan image pool per domain (0 disables it)
    # --- engine ---
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # autocast mixed precision (losses stay fp32)
    amp_dtype: str = "bf16"  # bf16 | fp16 (fp16 uses one GradScaler per optimiser)
    impl: str = "auto"  # fastgan.ops implementation: auto | ref
    channels_last: bool | None = None  # None = on for conv models on CUDA
    cuda_graphs: bool = False  # capture each training phase in a CUDA graph
    compile: bool = False  # torch.compile the models (for comparison)
    deterministic: bool = False  # torch.use_deterministic_algorithms (exact resume tests)
    # --- outputs ---
    out: str = ""  # "" = runs/<model>
    resume: str = ""  # "" (start fresh, refusing to overwrite a run) | auto | path to a checkpoint
    sample_every: int = 500  # iterations between sample grids (0 = only at the end)
    save_every: int = 1000  # iterations between checkpoints (0 = only at the end)
    log_every: int = 50  # iterations between loss reads (the only host syncs of the loop)
    tensorboard: bool = False  # also write TensorBoard scalars (needs the tensorboard extra)
    seed: int = 0
    dry_run: bool = False  # run one iteration and stop (smoke tests)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def config_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(TrainConfig)]


__all__ = ["TrainConfig", "MODELS", "config_fields", "field"]
