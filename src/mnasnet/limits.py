"""The limits on user input, in one place (the README's "Limits" section lists them).

Every value here is far above what a MnasNet needs. Input beyond a limit is
refused with a clear error before anything is allocated, so a typo, a hostile
checkpoint header or an odd image cannot ask for gigabytes.
"""

# Block strings (arch.py)
MAX_REPEATS = 32  # blocks per stage
MAX_KERNEL_SIZE = 15  # odd sizes only
MAX_EXPAND_RATIO = 32
MAX_FILTERS = 8192  # input, output, stem and head filters
MAX_BLOCKS = 256  # blocks in the whole network

# Models (model.py)
MAX_PARAMETERS = 500_000_000  # 2 GB of float32 weights; MnasNets have 2-7M
MAX_WIDTH_MULTIPLIER = 16.0
MAX_NUM_CLASSES = 100_000
MIN_RESOLUTION, MAX_RESOLUTION = 8, 4096

# Files and images
MAX_HEADER_BYTES = 16 * 2**20  # a checkpoint's JSON header
MAX_IMAGE_PIXELS = 8192 * 8192  # refused before decoding: a small file can claim a huge canvas
MAX_PREPROCESS_SIDE = 8192  # resolution or resize side of a preprocessing setting
# Above this many pixels the short-side resize computes only the centre crop's rows or
# columns (a 1x6000 strip would otherwise become 256x1,536,000 pixels).
MAX_RESIZED_PIXELS = 4096 * 4096

# Batches (predict, evaluate, benchmark, export)
MAX_BATCH_SIZE = 4096


def check_batch_size(batch_size: object, name: str = "batch size") -> int:
    """``batch_size`` if it is an integer from 1 to ``MAX_BATCH_SIZE``, else a ConfigError."""
    from mnasnet.errors import ConfigError

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ConfigError(f"{name} must be an integer from 1 to {MAX_BATCH_SIZE}, got {batch_size!r}")
    return batch_size


# Searches (search/)
MAX_SEED = 2**32 - 1  # what every generator a training seeds (NumPy, PyTorch, Python's) takes
MAX_TRIALS = 1_000_000
MAX_PROXY_REPEATS = 100  # trainings per candidate
