"""Image files decoded to arrays, on worker processes where there are many: numpy and Pillow only.

It lives in `core` rather than in `data` beside the other formats because a spawned worker imports the module of
the function it runs, and with it that module's packages: `relulab.data` imports torch (about 1.7 s a process,
sixteen at once), this module nothing heavier than Pillow.
"""
from __future__ import annotations

import io
import multiprocessing
import os
import struct
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from itertools import chain, islice
from typing import Iterable, Iterator, Optional

import numpy as np

from relulab.core.errors import UserError

# Where decoding moves to processes: Pillow releases the GIL only inside the decoder, and for a 32x32 JPEG the
# Python around it (opening, converting, the array) is most of the time, so threads decode CIFAR-10's 60,000 images
# little faster than one (about 15 s on the GPU machine's 16 cores). Processes pay for starting, so only for many
# images on several cores.
PROCESS_MIN_IMAGES = 8192
PROCESS_MIN_CORES = 4
# Images a worker process is sent at once. Chunks are sent as the caller's items arrive, so the workers decode
# while the caller is still reading its archive (CIFAR-10's tar takes seconds to walk, one member at a time).
CHUNK_IMAGES = 1024


def decode_images(items: Iterable[tuple[bytes, str]], processes: Optional[int] = None,
                  errors: str = "raise") -> list:
    """Decode image files, each given as (bytes, the name errors use), to uint8 H x W x C arrays, in the items'
    order and in parallel: on `processes` worker processes (by default one a core, where there are
    PROCESS_MIN_IMAGES images or more and PROCESS_MIN_CORES cores; 0: threads). `items` may be an iterator: its
    items are decoded as they come. errors="raise" raises the first unreadable image's UserError (in the items'
    order); errors="return" puts the UserError in that image's place, for a caller that uses only some images.

    An image that declares more pixels than Pillow's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`) is
    refused by name before its pixels are read. Pillow itself raises only above twice the limit and merely
    warns between one and two times it; here the warning is an error too."""
    items = iter(items)
    first = list(islice(items, PROCESS_MIN_IMAGES))
    cores = os.cpu_count() or 1
    if processes is None:
        processes = min(16, cores) if len(first) >= PROCESS_MIN_IMAGES and cores >= PROCESS_MIN_CORES else 0
    if processes > 0:
        decoded = _on_processes(chain(first, items), processes)
    else:
        decoded = _decode_chunk(first + list(items), threads=min(16, cores))
    if errors == "raise":
        refused = next((d for d in decoded if isinstance(d, UserError)), None)
        if refused is not None:
            raise refused
    return decoded


def _on_processes(items: Iterator[tuple[bytes, str]], processes: int) -> list:
    # spawn, not fork: the caller may hold CUDA or threads, which a forked child must not inherit
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        futures = [pool.submit(_decode_chunk, chunk) for chunk in _chunks(items, CHUNK_IMAGES)]
        return [image for future in futures for image in future.result()]


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    while chunk := list(islice(items, size)):
        yield chunk


def _decode_chunk(items: list[tuple[bytes, str]], threads: int = 1) -> list:
    """decode_image of each item, with Pillow's decompression-bomb warning an error and an unreadable image's
    UserError returned in its place, on `threads` threads."""
    from PIL import Image

    # The warnings filter is process-wide, not per thread: set it once around the pool, not in each worker
    # (catch_warnings entered and left by several threads at once would restore each other's filters).
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if threads <= 1:
            return [_decode_or_refusal(item) for item in items]
        # Pillow releases the GIL while decoding, so threads decode side by side while it does.
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(_decode_or_refusal, items))


def _decode_or_refusal(item: tuple[bytes, str]):
    try:
        return decode_image(*item)
    except UserError as e:
        return e


def decode_image(blob: bytes, source: str) -> np.ndarray:
    """Decode one image file to uint8 H x W x C (C = 1 for grayscale, else 3). Called alone, Pillow's
    decompression-bomb warning stays a warning: `decode_images` makes it an error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as img:
            img = img.convert("L") if img.mode in ("L", "1", "I;16", "I") else img.convert("RGB")
            array = np.asarray(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UserError(f"{source}: {_too_many_pixels(blob, e)}") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{source}: not a readable image ({e})") from None
    return array[:, :, None] if array.ndim == 2 else array


def _too_many_pixels(blob: bytes, error: Exception) -> str:
    """What to say of an image over the pixel limit. Pillow's error gives only the pixel count, so the width and
    height are read from the header again, with the format plugins Image.open uses but without its size check
    (a plugin's constructor parses the header; the pixels are read only on load)."""
    from PIL import Image

    prefix = blob[:16]  # what Image.open shows each plugin's `accept`
    for factory, accept in Image.OPEN.values():  # the plugins loaded so far, in the order Image.open tries them
        accepted = not accept or accept(prefix)  # as Image.open asks: text is a reason for refusing
        if isinstance(accepted, str) or not accepted:
            continue
        try:
            width, height = factory(io.BytesIO(blob), "").size
        except (SyntaxError, IndexError, TypeError, struct.error, OSError, ValueError):
            continue
        return (f"image of {width} x {height} pixels exceeds the decompression-bomb limit of "
                f"{Image.MAX_IMAGE_PIXELS} pixels")
    return f"image exceeds the decompression-bomb limit ({error})"
