"""Evaluate a compressed dataset: train a classifier on each arm with Ray Train and compare."""

from adq_ray.evaluate.classifier import cifar_stem, create_classifier
from adq_ray.evaluate.compare import accuracy_png, evaluate_arms, plot_accuracy, write_table
from adq_ray.evaluate.train import Recipe, random_crop_flip, to_images, train_and_test

__all__ = [
    "Recipe",
    "accuracy_png",
    "cifar_stem",
    "create_classifier",
    "evaluate_arms",
    "plot_accuracy",
    "random_crop_flip",
    "to_images",
    "train_and_test",
    "write_table",
]
