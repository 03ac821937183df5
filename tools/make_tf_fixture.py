"""Writes the TensorFlow checkpoint fixtures that tests/test_tf_checkpoint.py reads.

Builds MnasNet in TensorFlow the way Google's reference trainer does
(tensorflow/tpu models/official/mnasnet: Keras Conv2D/DepthwiseConv2D/Dense
layers, tf.layers BatchNormalization, one Keras model inside
``tf.variable_scope(model_name)`` with per-block ``mnas_blocks_{i}`` scopes,
blocks built before stem and head), so the checkpoint carries the reference's
variable names, numbering and layouts. Weights and BN statistics are random but
realistic (BN statistics are measured on the data, layer by layer), the
ExponentialMovingAverage copies hold values that differ from the raw
variables, RMSProp slots and ``global_step`` are present, and the checkpoint
is written by ``tf.compat.v1.train.Saver`` and packed as ``.tar.gz``. The
logits TensorFlow computes with the EMA values (the ones the reference
evaluates with) are stored next to the inputs.

TensorFlow is not a dependency of the package; run this from a separate venv
with ``tensorflow-cpu`` and ``tf-keras`` (Keras 2, needed for the v1 graph
mode the reference uses)::

    /tmp/tfenv/bin/python tools/make_tf_fixture.py --out tests/fixtures/tf
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.keras -> Keras 2, which supports graph mode
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # plain float32 kernels for reproducible logits

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf1 = tf.compat.v1

# The reference's block strings (mnasnet_models.py) and global settings.
ARCHS = {
    "mnasnet-a1": {
        "stem": 32,
        "dropout": 0.2,
        "blocks": [
            "r1_k3_s11_e1_i32_o16_noskip",
            "r2_k3_s22_e6_i16_o24",
            "r3_k5_s22_e3_i24_o40_se0.25",
            "r4_k3_s22_e6_i40_o80",
            "r2_k3_s11_e6_i80_o112_se0.25",
            "r3_k5_s22_e6_i112_o160_se0.25",
            "r1_k3_s11_e6_i160_o320",
        ],
    },
    "mnasnet-small": {
        "stem": 8,
        "dropout": 0.0,
        "blocks": [
            "r1_k3_s11_e1_i16_o8",
            "r1_k3_s22_e3_i8_o16",
            "r2_k3_s22_e6_i16_o16",
            "r4_k5_s22_e6_i16_o32_se0.25",
            "r3_k3_s11_e6_i32_o32_se0.25",
            "r3_k5_s22_e6_i32_o88_se0.25",
            "r1_k3_s11_e6_i88_o144",
        ],
    },
}
BN_MOMENTUM, BN_EPSILON = 0.99, 1e-3
MEAN_RGB = [0.485 * 255, 0.456 * 255, 0.406 * 255]
STDDEV_RGB = [0.229 * 255, 0.224 * 255, 0.225 * 255]


def decode_block(block_string: str) -> dict:
    options = {}
    for token in block_string.split("_"):
        parts = re.split(r"(\d.*)", token)
        if len(parts) >= 2:
            options[parts[0]] = parts[1]
    return {
        "kernel_size": int(options["k"]),
        "num_repeat": int(options["r"]),
        "input_filters": int(options["i"]),
        "output_filters": int(options["o"]),
        "expand_ratio": int(options["e"]),
        "id_skip": "noskip" not in block_string,
        "se_ratio": float(options["se"]) if "se" in options else None,
        "strides": [int(options["s"][0]), int(options["s"][1])],
    }


def round_filters(filters: int, multiplier: float | None, divisor: int = 8) -> int:
    if not multiplier:
        return filters
    filters *= multiplier
    new_filters = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new_filters < 0.9 * filters:
        new_filters += divisor
    return new_filters


def conv_kernel_initializer(shape, dtype=None, partition_info=None):
    kernel_height, kernel_width, _, out_filters = shape
    return tf1.random_normal(shape, stddev=np.sqrt(2.0 / (kernel_height * kernel_width * out_filters)), dtype=dtype)


def dense_kernel_initializer(shape, dtype=None, partition_info=None):
    init_range = 1.0 / np.sqrt(shape[1])
    return tf1.random_uniform(shape, -init_range, init_range, dtype=dtype)


def batch_norm() -> tf1.layers.BatchNormalization:
    return tf1.layers.BatchNormalization(axis=-1, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, fused=True)


def conv(filters: int, kernel_size: int, strides=(1, 1), use_bias: bool = False) -> tf.keras.layers.Conv2D:
    return tf.keras.layers.Conv2D(
        filters=filters,
        kernel_size=[kernel_size, kernel_size],
        strides=strides,
        kernel_initializer=conv_kernel_initializer,
        padding="same",
        use_bias=use_bias,
    )


class BatchNormTap:
    """Records every BN layer with the tensor it normalises, to measure realistic statistics."""

    def __init__(self) -> None:
        self.calls: list[tuple[tf1.layers.BatchNormalization, tf.Tensor]] = []

    def __call__(self, layer, inputs, training):
        self.calls.append((layer, inputs))
        return layer(inputs, training=training)


class MnasBlock:
    """Inverted residual block, layers created in the reference's order."""

    def __init__(self, args: dict, tap: BatchNormTap) -> None:
        self.args, self.tap = args, tap
        filters = args["input_filters"] * args["expand_ratio"]
        if args["expand_ratio"] != 1:
            self.expand_conv = conv(filters, 1)
            self.bn0 = batch_norm()
        self.depthwise_conv = tf.keras.layers.DepthwiseConv2D(
            [args["kernel_size"]] * 2,
            strides=args["strides"],
            depthwise_initializer=conv_kernel_initializer,
            padding="same",
            use_bias=False,
        )
        self.bn1 = batch_norm()
        self.has_se = args["se_ratio"] is not None and 0 < args["se_ratio"] <= 1
        if self.has_se:
            reduced = max(1, int(args["input_filters"] * args["se_ratio"]))
            self.se_reduce = conv(reduced, 1, use_bias=True)
            self.se_expand = conv(filters, 1, use_bias=True)
        self.project_conv = conv(args["output_filters"], 1)
        self.bn2 = batch_norm()

    def call(self, inputs, training):
        x = inputs
        if self.args["expand_ratio"] != 1:
            x = tf.nn.relu(self.tap(self.bn0, self.expand_conv(inputs), training))
        x = tf.nn.relu(self.tap(self.bn1, self.depthwise_conv(x), training))
        if self.has_se:
            with tf1.variable_scope("se"):
                se = tf.reduce_mean(x, [1, 2], keepdims=True)
                x = tf.sigmoid(self.se_expand(tf.nn.relu(self.se_reduce(se)))) * x
        x = self.tap(self.bn2, self.project_conv(x), training)
        args = self.args
        if args["id_skip"] and args["strides"] == [1, 1] and args["input_filters"] == args["output_filters"]:
            x = tf.add(x, inputs)
        return x


class MnasNetModel(tf.keras.Model):
    """The reference's Keras model; its class name gives the ``mnas_net_model`` name scope."""

    def __init__(self, blocks_args, stem_size, width_multiplier, num_classes, dropout_rate, tap) -> None:
        super().__init__()
        self.tap = tap
        self.blocks = []
        for args in blocks_args:
            args = dict(
                args,
                input_filters=round_filters(args["input_filters"], width_multiplier),
                output_filters=round_filters(args["output_filters"], width_multiplier),
            )
            self.blocks.append(MnasBlock(args, tap))
            if args["num_repeat"] > 1:
                args = dict(args, input_filters=args["output_filters"], strides=[1, 1])
            for _ in range(args["num_repeat"] - 1):
                self.blocks.append(MnasBlock(args, tap))
        self.conv_stem = conv(round_filters(stem_size, width_multiplier), 3, strides=[2, 2])
        self.bn0 = batch_norm()
        self.conv_head = conv(1280, 1)
        self.bn1 = batch_norm()
        self.avg_pooling = tf.keras.layers.GlobalAveragePooling2D()
        self.fc = tf.keras.layers.Dense(num_classes, kernel_initializer=dense_kernel_initializer)
        self.dropout = tf.keras.layers.Dropout(dropout_rate) if dropout_rate > 0 else None

    def call(self, inputs, training=False):
        with tf1.variable_scope("mnas_stem"):
            outputs = tf.nn.relu(self.tap(self.bn0, self.conv_stem(inputs), training))
        for index, block in enumerate(self.blocks):
            with tf1.variable_scope(f"mnas_blocks_{index}"):
                outputs = block.call(outputs, training)
        with tf1.variable_scope("mnas_head"):
            outputs = tf.nn.relu(self.tap(self.bn1, self.conv_head(outputs), training))
            outputs = self.avg_pooling(outputs)
            if self.dropout is not None:
                outputs = self.dropout(outputs, training=training)
            outputs = self.fc(outputs)
        return outputs


def build_graph(model_name: str, width_multiplier: float | None, num_classes: int):
    """The eval graph on a float image placeholder (0-255 RGB), plus EMA, RMSProp and global_step."""
    spec = ARCHS[model_name]
    tap = BatchNormTap()
    images = tf1.placeholder(tf.float32, [None, None, None, 3], name="images")
    features = (images - tf.constant(MEAN_RGB, shape=[1, 1, 3])) / tf.constant(STDDEV_RGB, shape=[1, 1, 3])
    with tf1.variable_scope(model_name):
        model = MnasNetModel(
            [decode_block(s) for s in spec["blocks"]], spec["stem"], width_multiplier, num_classes, spec["dropout"], tap
        )
        logits = model(features, training=False)
    global_step = tf1.train.get_or_create_global_step()
    # What mnasnet_main.py's model_fn adds around the model in training.
    labels = tf1.placeholder(tf.int32, [None], name="labels")
    loss = tf1.losses.softmax_cross_entropy(tf.one_hot(labels, num_classes), logits, label_smoothing=0.1)
    optimizer = tf1.train.RMSPropOptimizer(0.016, decay=0.9, momentum=0.9, epsilon=1e-3)
    train_op = optimizer.minimize(loss, global_step)
    ema = tf1.train.ExponentialMovingAverage(decay=0.9999, num_updates=global_step)
    ema_vars = tf1.trainable_variables()
    for variable in tf1.global_variables():
        if "moving_mean" in variable.name or "moving_variance" in variable.name:
            ema_vars.append(variable)
    ema_vars = list(dict.fromkeys(ema_vars))
    with tf.control_dependencies([train_op]):
        ema.apply(ema_vars)
    return images, logits, tap, ema, ema_vars, global_step


def randomize_weights(session, model_vars, rng: np.random.Generator, base: dict | None = None) -> dict:
    """Realistic random weights (the reference's init, gamma/beta near 1/0); ``base`` perturbs those instead."""
    values = {}
    for variable in model_vars:
        name, shape = variable.op.name, variable.shape.as_list()
        if "moving_" in name:
            continue  # measured later
        if base is not None:
            old = base[name]
            values[name] = (old * rng.uniform(0.8, 1.2, old.shape) + rng.normal(0, 0.05, old.shape) * old.std()).astype(
                np.float32
            )
        elif name.endswith("gamma"):
            values[name] = rng.uniform(0.6, 1.4, shape).astype(np.float32)
        elif name.endswith("beta") or name.endswith("bias"):
            values[name] = rng.normal(0.0, 0.2, shape).astype(np.float32)
        else:
            kh, kw = (shape[0], shape[1]) if len(shape) == 4 else (1, 1)
            fan_out = kh * kw * (1 if "depthwise" in name else shape[-1])
            if len(shape) == 2:  # dense: kept small so logits stay in a plausible range
                values[name] = rng.uniform(-1, 1, shape).astype(np.float32) / np.sqrt(shape[0]) * 3
            else:
                values[name] = rng.normal(0.0, np.sqrt(2.0 / fan_out), shape).astype(np.float32)
    for name, value in values.items():
        _assign(session, name, value)
    return values


def _assign(session, name: str, value: np.ndarray) -> None:
    variable = [v for v in tf1.global_variables() if v.op.name == name][0]
    variable.load(value, session)


def calibrate_batch_norm(session, images, tap: BatchNormTap, batch: np.ndarray, rng: np.random.Generator) -> dict:
    """Sets each BN layer's moving statistics near the statistics of its real input, in forward order."""
    values = {}
    for layer, inputs in tap.calls:
        activations = session.run(inputs, {images: batch})
        mean = activations.mean(axis=(0, 1, 2))
        var = activations.var(axis=(0, 1, 2))
        channels = mean.shape[0]
        # Perturbed so that BN does not normalise perfectly (trained statistics never do).
        mean = mean + rng.normal(0, 0.1, channels) * np.sqrt(var + 1e-3)
        var = var * rng.uniform(0.7, 1.3, channels) + 1e-3
        layer.moving_mean.load(mean.astype(np.float32), session)
        layer.moving_variance.load(var.astype(np.float32), session)
        values[layer.moving_mean.op.name] = mean.astype(np.float32)
        values[layer.moving_variance.op.name] = var.astype(np.float32)
    return values


def make_fixture(
    model_name: str,
    width_multiplier: float | None,
    num_classes: int,
    out: Path,
    seed: int,
    with_ema: bool,
    inputs: dict[str, np.ndarray],
) -> dict:
    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(seed)
        tf1.keras.backend.set_learning_phase(0)
        images, logits, tap, ema, ema_vars, global_step = build_graph(model_name, width_multiplier, num_classes)
        model_vars = [v for v in tf1.global_variables() if v.op.name.startswith(model_name + "/")]
        model_vars = [v for v in model_vars if not re.search(r"/(RMSProp(_\d+)?|ExponentialMovingAverage)$", v.op.name)]
        saver_vars = tf1.global_variables()
        if not with_ema:
            shadow = {ema.average(v) for v in ema_vars}
            saver_vars = [v for v in saver_vars if v not in shadow]
        saver = tf1.train.Saver(saver_vars)
        calibration = rng.integers(0, 256, (4, 160, 160, 3)).astype(np.float32)
        result = {}
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            raw = randomize_weights(session, model_vars, rng)
            raw.update(calibrate_batch_norm(session, images, tap, calibration, rng))
            for key, batch in inputs.items():
                result[f"logits_raw_{key}"] = session.run(logits, {images: batch})
            if with_ema:
                averaged = randomize_weights(session, model_vars, rng, base=raw)
                averaged.update(calibrate_batch_norm(session, images, tap, calibration, rng))
                for key, batch in inputs.items():
                    result[f"logits_{key}"] = session.run(logits, {images: batch})
                for variable in ema_vars:
                    ema.average(variable).load(averaged[variable.op.name], session)
                for name, value in raw.items():
                    _assign(session, name, value)
            else:
                for key in inputs:
                    result[f"logits_{key}"] = result[f"logits_raw_{key}"]
            global_step.load(123456, session)
            # RMSProp slots keep their initial values (ones/zeros): realistic enough to be ignored,
            # and they compress to nothing in the .tar.gz.
            folder = Path(tempfile.mkdtemp()) / model_name
            folder.mkdir()
            saver.save(session, str(folder / "model.ckpt"), write_meta_graph=False, write_state=True)
            names = sorted(v.op.name for v in saver_vars)
    # A few values as TensorFlow's own reader returns them: the yardstick for our reader.
    reader = tf1.train.load_checkpoint(str(folder / "model.ckpt"))
    for name in sorted(reader.get_variable_to_shape_map())[::97] + ["global_step"]:
        result[f"tensor:{name}"] = np.asarray(reader.get_tensor(name))
    _make_relative_checkpoint_state(folder)
    archive = out / f"{model_name}-{width_multiplier or 1.0}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    shutil.rmtree(folder.parent)
    print(f"{archive}: {archive.stat().st_size} bytes, {len(names)} variables")
    return result


def _make_relative_checkpoint_state(folder: Path) -> None:
    # Saver writes absolute paths into `checkpoint`; Google's tarballs name the prefix relative to the folder.
    (folder / "checkpoint").write_text(
        'model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/tf"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # 0-255 pixels (stored as uint8), shared by both models. 224 pads TF-style 0 before /
    # 1 after on every stride-2 layer; 99x131 mixes odd and even sizes (both paddings).
    rng = np.random.default_rng(1234)
    inputs = {
        "224": rng.integers(0, 256, (1, 224, 224, 3), dtype=np.uint8),
        "99x131": rng.integers(0, 256, (2, 99, 131, 3), dtype=np.uint8),
    }
    arrays = {f"input_{key}": value for key, value in inputs.items()}
    # Small widths keep the committed files under 4 MB. a1 carries EMA copies (the
    # test proves they win); small at 0.75 keeps its block-0 quirk (stem 8 filters,
    # string i16) and has no EMA copies, the case of a checkpoint saved without them.
    for prefix, model_name, width, with_ema, seed in [
        ("a1", "mnasnet-a1", 0.2, True, 0),
        ("small", "mnasnet-small", 0.75, False, 1),
    ]:
        for key, value in make_fixture(model_name, width, 10, args.out, seed, with_ema, inputs).items():
            arrays[f"{prefix}_{key}"] = value
    np.savez_compressed(args.out / "logits.npz", **arrays)
    print(f"{args.out / 'logits.npz'}: {(args.out / 'logits.npz').stat().st_size} bytes")


if __name__ == "__main__":
    main()
