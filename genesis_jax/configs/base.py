"""Fields shared by every config: the official Models Genesis recipe as defaults."""

import dataclasses

import ml_collections

from genesis_jax.deform import DeformConfig


def common_config() -> ml_collections.ConfigDict:
    """What every task's config holds: loop, model, optimizer, schedule, early stopping."""
    c = ml_collections.ConfigDict()
    c.task = "pretrain"              # pretrain | segmentation | classification (which task the loop runs)
    c.seed = 0                       # every random draw of the run derives from it (exact resume)
    c.batch_size = 6                 # global batch, split over all devices of all processes
    c.total_steps = 100_000          # optimizer steps of the whole run
    c.steps_per_epoch = 0            # 0: training cubes // batch_size (see data.cubes_per_volume)
    c.eval_every = 0                 # 0: once per epoch
    c.checkpoint_every = 0           # 0: once per epoch
    c.keep_checkpoints = 3           # latest N kept, plus the best by validation loss
    c.log_every = 10                 # log (progress bar, TensorBoard) every N steps ...
    c.log_seconds = 30.0             # ... and after this many seconds without a log (one process)
    c.images = 4                     # validation examples drawn in the PNG grids
    c.export_pytorch = True          # also write the best weights as a PyTorch state_dict
    c.num_devices = 0                # 0: all devices; N: the first N (tests, debugging)
    c.allow_data_change = False      # resume even though the data's sha256 differs from the run's start
    c.mesh = ml_collections.ConfigDict(dict(
        space=1,                     # devices sharing one patch, its X axis split over them (segmentation: patches bigger than a device; pre-training and classification keep 1); the batch splits over the rest
    ))

    c.model = ml_collections.ConfigDict(dict(
        arch="unet",                 # unet (the official U-Net; 2D data: its 2D counterpart) | resnet18_unet (2D only: smp.Unet("resnet18")'s layout)
        width=32,                    # channels of the first stage (32: the official 19.07M-parameter U-Net); fine-tuning must use its init's width
        bn_mode="batch",             # batch (official: batch statistics also in eval) | running
        dtype="float32",             # compute dtype, float32 | bfloat16 (parameters stay float32)
        conv="auto",                 # 3x3x3 conv formulation, auto | native | stacked2d (models/conv.py; same weights)
        in_channels=1,               # input channels; left at 1 it follows the data (a store's channels, a manifest's columns)
    ))
    # genesis_jax/optim.py says what each field does; README "Optimizers and schedules".
    c.optimizer = ml_collections.ConfigDict(dict(
        name="sgd",                  # sgd | adam | adamw
        learning_rate=1.0,           # the base rate (the schedule scales it)
        momentum=0.9,                # sgd
        nesterov=False,              # sgd
        b1=0.9,                      # adam, adamw: first-moment decay
        b2=0.999,                    # adam, adamw: second-moment decay
        eps=1e-8,                    # adam, adamw: denominator epsilon
        weight_decay=0.0,            # sgd, adam: L2 in the gradient (torch); adamw: decoupled
        clip_norm=0.0,               # > 0: clip the gradient's global norm first
    ))
    c.schedule = ml_collections.ConfigDict(dict(
        kind="step",                 # constant | step | cosine | plateau
        step_epochs=40,              # step: x gamma every step_epochs epochs
        gamma=0.5,                   # step, plateau: the factor
        plateau_epochs=10,           # plateau: epochs without a better validation loss before x gamma
        warmup_epochs=0.0,           # cosine: linear warm-up from 0
        final_fraction=0.0,          # cosine: the rate at total_steps, as a fraction of learning_rate
    ))
    c.early_stopping_patience = 50   # epochs without a better validation loss
    return c


def base_config() -> ml_collections.ConfigDict:
    """Pre-training (the paper's recipe)."""
    c = common_config()
    c.init = "scratch"               # scratch | a genesis-jax run directory | an official-layout .pt: continue from its weights
    c.init_channels = "spread"       # a one-channel init for C channels: spread (kernel / C to each) | a channel number
    c.deform = ml_collections.ConfigDict(dataclasses.asdict(DeformConfig()))
    c.data = ml_collections.ConfigDict(dict(
        source="sample",             # "sample" (embedded chest CT crop), "store", or "volumes"
        store="",                    # cube store path (source="store")
        volumes="",                  # comma-separated files/directories (source="volumes")
        val_fraction=0.1,            # store: share of cubes held out for validation
        val_cubes=32,                # sample/volumes: frozen validation cubes
        cubes_per_volume=32,         # sample/volumes: an epoch is volumes x cubes_per_volume cubes
        cube_shape=(64, 64, 32),     # cube size (X, Y, Z), each divisible by 8; a store must hold this size
        filter="lung",               # sample/volumes: lung (chest CT) | foreground (any body part) | none
        modality="ct",               # ct: the HU window [-1000, 1000] -> [0, 1]; mr: 0.5-99.5 percentiles
    ))
    return c


def genesis_2d_base() -> ml_collections.ConfigDict:
    """Models Genesis 2D pre-training: the paper's recipe on 2D images (N, H, W, C), every
    deformation from the same code with its per-side rules (deform.dims=2) and the shuffle's
    block count scaled to the image (shuffle.blocks_for_shape)."""
    from genesis_jax.deform.shuffle import blocks_for_shape
    c = base_config()
    c.data.cube_shape = (128, 128)
    c.data.slice_axis = "z"          # sample/volumes: the axis 2D slices are cut across (x | y | z)
    c.deform.dims = 2
    c.deform.local_blocks = blocks_for_shape(c.data.cube_shape)
    return c


def finetune_base() -> ml_collections.ConfigDict:
    """What every fine-tuning task shares: the paper's target-task defaults (Adam 1e-3,
    plateau schedule, early stopping) and where the pre-trained weights come from."""
    c = common_config()
    c.init = "scratch"               # scratch | a genesis-jax run directory | an official-layout .pt
    c.init_channels = "spread"       # a one-channel init for C channels: spread (kernel / C to each) | a channel number
    c.batch_size = 4
    c.total_steps = 2000
    c.optimizer.name, c.optimizer.learning_rate = "adam", 1e-3
    c.optimizer.pretrained_lr_multiplier = 1.0   # the pre-trained parameters' updates x this
    c.optimizer.freeze_pretrained_steps = 0      # keep the pre-trained parameters as loaded for K steps
    c.schedule.kind, c.schedule.plateau_epochs = "plateau", 10
    c.early_stopping_patience = 30
    c.export_pytorch = False
    return c


def segmentation_base() -> ml_collections.ConfigDict:
    """Segmentation fine-tuning: the whole U-Net but its last layer from `init`."""
    c = finetune_base()
    c.task = "segmentation"
    c.loss = "dice_bce"              # dice | bce | dice_bce, on the sigmoid outputs (genesis_jax/losses.py)
    c.data = ml_collections.ConfigDict(dict(
        train_images="",             # comma-separated volumes (NIfTI, MHD/MHA, DICOM series folders)
        train_labels="",             # their label volumes, same order and grids
        val_images="",               # comma-separated validation volumes (model selection); empty: a z slab held out
        val_labels="",               # their label volumes
        val_fraction=0.2,            # without val_images: share of each training volume's z slices held out
        label_values="1",            # raw label values that become classes 1..K, e.g. "5" or "5,6"
        patch_shape=(64, 64, 32),    # each dim divisible by 8; on the command line --config.data.patch_shape='(32, 32, 16)'
        foreground_ratio=0.5,        # share of patches centred on a foreground voxel
        patches_per_epoch=256,       # an epoch is this many training patches
        val_patches=32,              # frozen validation patches (drawn once from the validation volumes)
        modality="ct",               # ct: the HU window [-1000, 1000] -> [0, 1]; mr: 0.5-99.5 percentiles
    ))
    return c


def classification_base() -> ml_collections.ConfigDict:
    """Classification fine-tuning: the official TargetNet (the U-Net's encoder from `init`,
    global average pooling, Dense 1024, ReLU, Dense) on labelled cubes listed in CSVs."""
    c = finetune_base()
    c.task = "classification"
    c.batch_size = 8
    c.data = ml_collections.ConfigDict(dict(
        train_csv="",                # image,x,y,z,label or cube,label rows (genesis_jax/data/classified.py)
        val_csv="",                  # the same for validation (model selection, AUC)
        store="",                    # the cube store that cube,label rows index
        classes=2,                   # 2: one logit, sigmoid + BCE; more: softmax + cross-entropy
        cube_shape=(64, 64, 32),     # each dim divisible by 8; on the command line --config.data.cube_shape='(32, 32, 16)'
        modality="ct",               # ct: the HU window [-1000, 1000] -> [0, 1]; mr: 0.5-99.5 percentiles
    ))
    return c


def segmentation_2d_base() -> ml_collections.ConfigDict:
    """2D segmentation fine-tuning: 128x128 patches one slice deep across data.slice_axis
    of the labelled volumes (or of 2D images with masks), the 2D U-Net (model.arch)."""
    c = segmentation_base()
    c.data.patch_shape = (128, 128)
    c.data.slice_axis = "z"          # the volume axis 2D patches are cut across (x | y | z); 2D images: z
    return c


def classification_2d_base() -> ml_collections.ConfigDict:
    """2D classification fine-tuning: the TargetNet on the 2D U-Net's encoder, whole
    images resized to data.cube_shape (rows image,label) or 2D store images (cube,label)."""
    c = classification_base()
    c.data.cube_shape = (128, 128)
    c.data.modality = "xray"
    return c
