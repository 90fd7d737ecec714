"""Images as the project keeps them: a folder of them, one subfolder per class (torchvision's
ImageFolder layout), and one image as a uint8 tensor (channels, height, width) of one size,
decoded the same way for import_data.py and for predict.py. Pillow is an optional extra
(pip install -e ".[images]"), imported only where images are read."""

import warnings
from pathlib import Path

import numpy as np
import torch

from plumbing.errors import DataError, SetupError

# What ImageFolder reads (torchvision's IMG_EXTENSIONS); anything else in the folders is left.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS and not path.name.startswith(".")


def images_in(folder: Path) -> list[Path]:
    """The images in folder and its subfolders, in a fixed order (hidden files left out)."""
    return sorted(
        path
        for path in folder.rglob("*")
        if is_image(path) and path.is_file() and not any(p.startswith(".") for p in path.parts)
    )


def class_folders(root: Path) -> dict[str, list[Path]]:
    """Each class subfolder of root, by name in sorted order (label 0 first, as ImageFolder),
    and its images; one line naming what is missing where there is no class or no image."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder of images")
    layout = f"expected {root}/<class>/<image>, one subfolder per class (torchvision's ImageFolder)"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class subfolders; {layout}")
    found = {name: images_in(root / name) for name in classes}
    empty = [name for name, paths in found.items() if not paths]
    if empty:
        raise DataError(
            f"{root / empty[0]} holds no images ({', '.join(EXTENSIONS)}): add some, or remove"
            f" that class's folder; {layout}"
        )
    return found


def pillow() -> object:
    try:
        from PIL import Image
    except ModuleNotFoundError:
        raise SetupError(
            'reading images needs Pillow, an optional extra: pip install -e ".[images]"'
        ) from None
    return Image


def to_tensor(path: Path, size: tuple[int, int], channels: int) -> torch.Tensor:
    """The image at path as a uint8 tensor (channels, *size): turned as its EXIF orientation
    says, converted to RGB (3 channels) or grayscale (1), resized to size (height, width) with
    bilinear filtering. One line naming the file when it cannot be read as an image."""
    Image = pillow()
    from PIL import ImageOps

    try:
        with Image.open(path) as image, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on palettes and EXIF, per image
            image = ImageOps.exif_transpose(image)
            if image.mode == "P":  # a palette's transparency goes through RGBA
                image = image.convert("RGBA")
            image = image.convert("RGB" if channels == 3 else "L")
            image = image.resize(size[::-1], Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: not an image that can be read ({reason})") from None
    X = torch.from_numpy(pixels.copy())  # its own memory: torch.save writes just this image
    return X.permute(2, 0, 1).contiguous() if X.dim() == 3 else X.unsqueeze(0)


class Decoded(torch.utils.data.Dataset):
    """Images as to_tensor reads them, one per item, for DataLoader workers to decode."""

    def __init__(self, paths: list[Path], size: tuple[int, int], channels: int) -> None:
        self.paths, self.size, self.channels = paths, size, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_tensor(self.paths[index], self.size, self.channels)
