"""Data: datasets and their file formats (``datasets``) and the on-device batch loader (``loader``)."""

from .datasets import (
    CIFAR10_INFO,
    CIFAR100_INFO,
    DATASETS,
    DIGITS_INFO,
    FASHION_MNIST_INFO,
    MNIST_INFO,
    SVHN_INFO,
    TINY_IMAGENET_INFO,
    ArrayDataset,
    DatasetInfo,
    Splits,
    debian_fashion_mnist_dir,
    default_val_size,
    load_dataset,
    read_idx,
    to_float,
)
from .loader import BatchLoader, augment_batch

__all__ = [
    "CIFAR10_INFO",
    "CIFAR100_INFO",
    "DATASETS",
    "DIGITS_INFO",
    "FASHION_MNIST_INFO",
    "MNIST_INFO",
    "SVHN_INFO",
    "TINY_IMAGENET_INFO",
    "ArrayDataset",
    "BatchLoader",
    "DatasetInfo",
    "Splits",
    "augment_batch",
    "debian_fashion_mnist_dir",
    "default_val_size",
    "load_dataset",
    "read_idx",
    "to_float",
]
