"""ml_collections ConfigDict files for python -m genesis_jax.train (--config=NAME or a path)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
NAMES = ("demo", "genesis_chest_ct", "multi_device", "segmentation", "classification")


def config_path(name_or_path: str) -> str:
    """'demo' or 'demo:arg' -> the file path absl's config flag expects; paths pass through."""
    name, _, arg = name_or_path.partition(":")
    if name in NAMES:
        return str(CONFIG_DIR / f"{name}.py") + (f":{arg}" if arg else "")
    return name_or_path
