"""Prompt batches for building HRVs: the paper's ImageNet prompts and user prompt lists."""
from __future__ import annotations

IMAGENET_TEMPLATE = "A photo of a {}"


class PromptError(ValueError):
    pass


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet class names, from torchvision's metadata (no download)."""
    try:
        from torchvision.models import ResNet50_Weights
    except ImportError:
        raise PromptError("the ImageNet prompt batch needs torchvision (ComfyUI installs it): pip install torchvision") from None
    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def imagenet_prompts(template: str = IMAGENET_TEMPLATE) -> list[str]:
    return [template.format(name) for name in imagenet_class_names()]


def parse_prompt_text(text: str) -> list[str]:
    """One prompt per non-empty line; lines starting with # are comments."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def read_prompt_file(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            prompts = parse_prompt_text(f.read())
    except OSError as e:
        raise PromptError(f"cannot read prompt file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise PromptError(f"prompt file {path} is not UTF-8 text") from None
    if not prompts:
        raise PromptError(f"prompt file {path} has no prompts (one per line)")
    return prompts


def prompt_batch(imagenet: bool, extra: list[str] | None = None) -> list[str]:
    prompts = (imagenet_prompts() if imagenet else []) + list(extra or [])
    if not prompts:
        raise PromptError("the prompt batch is empty: give prompts (one per line) or include the ImageNet prompts")
    return prompts
