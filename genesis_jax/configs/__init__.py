"""ml_collections ConfigDict files for python -m genesis_jax.train (--config=NAME or a path)."""

import re
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
NAMES = ("demo", "genesis_chest_ct", "multi_device", "segmentation", "classification", "genesis_2d",
         "segmentation_2d", "classification_2d")


def config_path(name_or_path: str) -> str:
    """'demo' or 'demo:arg' -> the file path absl's config flag expects; paths pass through."""
    name, _, arg = name_or_path.partition(":")
    if name in NAMES:
        return str(CONFIG_DIR / f"{name}.py") + (f":{arg}" if arg else "")
    return name_or_path


def summary(name: str) -> str:
    """The first paragraph of a named config's docstring, on one line."""
    text = (CONFIG_DIR / f"{name}.py").read_text()
    match = re.search(r'"""(.+?)(?:\n\s*\n|""")', text, re.S)
    return " ".join(match.group(1).split()).rstrip(".:") if match else ""


# Which functions of configs/base.py build each task's config, in order (later ones win).
BUILDERS = {"pretrain": ("common_config", "base_config", "genesis_2d_base"),
            "segmentation": ("common_config", "finetune_base", "segmentation_base", "segmentation_2d_base"),
            "classification": ("common_config", "finetune_base", "classification_base", "classification_2d_base")}


def field_meanings(task: str = "pretrain") -> dict:
    """'data.filter' -> what the field holds, for a task's config: the trailing comments
    of configs/base.py (c.FIELD = ... and the fields of ConfigDict(dict(...)) sections) in
    the functions that build that task's config, and of the DeformConfig fields; the one
    place each meaning is written."""
    by_function, function, section = {}, None, None
    for line in (CONFIG_DIR / "base.py").read_text().splitlines():
        defined = re.match(r"def (\w+)\(", line)
        if defined:
            function, section = defined.group(1), None
            continue
        opened = re.match(r"\s*c\.(\w+) = ml_collections\.ConfigDict\(dict\(\s*$", line)
        if opened:
            section = opened.group(1)
            continue
        if section and re.match(r"\s*\)\)", line):
            section = None
        top = re.match(r"\s*c\.([\w.]+)\s*=[^#]*#\s*(.+)", line)
        inner = re.match(r"\s*(\w+)=[^#]*#\s*(.+)", line) if section else None
        if top or inner:
            name = top.group(1) if top else f"{section}.{inner.group(1)}"
            by_function.setdefault(function, {})[name] = (top or inner).group(2).strip()
    meanings = {}
    for function in BUILDERS.get(task, BUILDERS["pretrain"]):
        meanings.update(by_function.get(function, {}))
    deform = (CONFIG_DIR.parent / "deform" / "config.py").read_text()
    for name, meaning in re.findall(r"^    (\w+): \w+ = [^#\n]*#\s*(.+)$", deform, re.M):
        meanings[f"deform.{name}"] = meaning.strip()
    return meanings


def describe(config) -> str:
    """Every field of a config, `name = value  # meaning`."""
    meanings = field_meanings(config.get("task", "pretrain"))
    lines = []

    def walk(node, prefix):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if hasattr(value, "items"):
                walk(value, name + ".")
                continue
            line = f"{name} = {value!r}"
            lines.append(f"{line:<44s}  # {meanings[name]}" if name in meanings else line)

    walk(config, "")
    return "\n".join(lines)
