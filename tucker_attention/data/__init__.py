"""Real data, offline by default.

Text: :func:`load_text` — ``"stdlib"`` (the Python standard library's own source, byte-level; on every
machine), ``"tinyshakespeare"`` (downloaded once), ``"openwebtext"`` (🤗 ``datasets`` + GPT-2 BPE);
:func:`get_batch` draws nanoGPT-style ``(x, y)`` windows.

Images: :func:`load_images` — ``"digits"`` (scikit-learn's bundled 8×8 digits; offline), ``"cifar10"``,
``"image_folder"`` (🤗 ``datasets``); :func:`make_loader` gives a ``DataLoader`` ordered by
``(seed, epoch)``.

``datasets``, ``tiktoken`` and ``scikit-learn`` are optional (``pip install "tucker-attention[data]"``)
and imported only when a loader needs them.
"""

from .images import (
    HFImageDataset,
    ImageData,
    ImageTensorDataset,
    SeededSampler,
    augment_crop_flip,
    cifar10,
    digits,
    image_folder,
    image_to_tensor,
    load_images,
    make_loader,
    resize,
)
from .text import (
    TINYSHAKESPEARE_URL,
    TextData,
    Tokenizer,
    default_cache_dir,
    download,
    get_batch,
    get_tokenizer,
    load_text,
    openwebtext,
    stdlib_corpus,
    stdlib_files,
    tinyshakespeare,
)

__all__ = [
    "TINYSHAKESPEARE_URL",
    "HFImageDataset",
    "ImageData",
    "ImageTensorDataset",
    "SeededSampler",
    "TextData",
    "Tokenizer",
    "augment_crop_flip",
    "cifar10",
    "default_cache_dir",
    "digits",
    "download",
    "get_batch",
    "get_tokenizer",
    "image_folder",
    "image_to_tensor",
    "load_images",
    "load_text",
    "make_loader",
    "openwebtext",
    "resize",
    "stdlib_corpus",
    "stdlib_files",
    "tinyshakespeare",
]
