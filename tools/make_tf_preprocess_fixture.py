"""Writes tests/fixtures/preprocess/tf_reference_eval.npz: Google's eval preprocessing as TensorFlow computes it.

Run with a Python that has TensorFlow (never a dependency of the package):

    /tmp/tfenv/bin/python tools/make_tf_preprocess_fixture.py --images-dir \\
        .venv/lib/python3.11/site-packages/skimage/data

It follows tensorflow/tpu models/official/mnasnet/preprocessing.py
``_decode_and_center_crop`` op for op, with two stand-ins: the PNG photos are
decoded with ``tf.io.decode_png`` (lossless, so PIL decodes the same bytes) and
cropped with ``crop_to_bounding_box`` instead of ``decode_and_crop_jpeg``. The
normalisation is the reference's ``(x - MEAN_RGB) / STDDEV_RGB`` on 0-255 pixels.
Odd-sized cases are slices of the photos, so the test can cut the same ones.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import tensorflow.compat.v1 as tf

CROP_PADDING = 32
MEAN_RGB = [0.485 * 255, 0.456 * 255, 0.406 * 255]
STDDEV_RGB = [0.229 * 255, 0.224 * 255, 0.225 * 255]

# (photo, rows, cols, resolution): rows/cols slice the decoded photo (None = all).
CASES = [
    ("astronaut.png", None, None, 224),
    ("coffee.png", None, None, 224),
    ("chelsea.png", None, None, 40),
    ("coffee.png", None, None, 32),
    ("motorcycle_left.png", None, None, 33),
    ("astronaut.png", 301, 457, 48),
    ("chelsea.png", 299, 97, 48),  # portrait
    ("motorcycle_left.png", 123, 400, 29),
    ("astronaut.png", 37, 29, 40),  # upsampling: the crop is smaller than the output
]
# Full outputs at 224 would make a large fixture; every 7th row and column still
# checks the crop and every interpolation weight pattern.
STRIDE_224 = 7


def reference_eval(image: tf.Tensor, image_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    shape = tf.shape(image)
    image_height, image_width = shape[0], shape[1]
    padded_center_crop_size = tf.cast(
        ((image_size / (image_size + CROP_PADDING)) * tf.cast(tf.minimum(image_height, image_width), tf.float32)),
        tf.int32,
    )
    offset_height = ((image_height - padded_center_crop_size) + 1) // 2
    offset_width = ((image_width - padded_center_crop_size) + 1) // 2
    window = tf.stack([offset_height, offset_width, padded_center_crop_size])
    image = tf.image.crop_to_bounding_box(
        image, offset_height, offset_width, padded_center_crop_size, padded_center_crop_size
    )
    resized = tf.image.resize([image], [image_size, image_size])[0]
    legacy = tf.image.resize_bilinear([image], [image_size, image_size], align_corners=False, half_pixel_centers=False)
    with tf.control_dependencies([tf.debugging.assert_equal(resized, legacy[0])]):
        resized = tf.identity(resized)
    resized = tf.image.convert_image_dtype(resized, dtype=tf.float32)
    resized -= tf.constant(MEAN_RGB, shape=[1, 1, 3], dtype=resized.dtype)
    resized /= tf.constant(STDDEV_RGB, shape=[1, 1, 3], dtype=resized.dtype)
    return resized, window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-dir", type=Path, required=True, help="skimage's data folder")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/preprocess/tf_reference_eval.npz"))
    args = parser.parse_args()
    tf.enable_eager_execution()
    arrays: dict[str, np.ndarray] = {}
    for index, (photo, rows, cols, resolution) in enumerate(CASES):
        decoded = tf.io.decode_png(tf.io.read_file(str(args.images_dir / photo)), channels=3).numpy()
        sliced = decoded[:rows, :cols]
        output, window = reference_eval(tf.constant(sliced), resolution)
        output = output.numpy()
        if resolution == 224:
            output = output[::STRIDE_224, ::STRIDE_224]
        prefix = f"case{index}"
        arrays[f"{prefix}_photo"] = np.array(photo)
        arrays[f"{prefix}_slice"] = np.array([rows or 0, cols or 0], dtype=np.int64)
        arrays[f"{prefix}_resolution"] = np.array(resolution, dtype=np.int64)
        arrays[f"{prefix}_stride"] = np.array(STRIDE_224 if resolution == 224 else 1, dtype=np.int64)
        arrays[f"{prefix}_input_sha256"] = np.array(hashlib.sha256(np.ascontiguousarray(sliced).tobytes()).hexdigest())
        arrays[f"{prefix}_window"] = window.numpy().astype(np.int64)
        arrays[f"{prefix}_output"] = output.astype(np.float32)
        print(f"{prefix}: {photo} {sliced.shape} -> {resolution}, crop window {window.numpy().tolist()}")
    arrays["tensorflow_version"] = np.array(tf.__version__)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, num_cases=np.array(len(CASES)), **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
