"""MaskFormer losses: Hungarian matching, focal/dice/CE set criterion, loss weights."""

from maskformer.losses.criterion import SetCriterion, build_criterion
from maskformer.losses.functional import (
    dice_loss,
    pairwise_class_cost,
    pairwise_dice_cost,
    pairwise_focal_cost,
    sigmoid_focal_loss,
)
from maskformer.losses.matcher import HungarianMatcher
from maskformer.losses.point_sampling import point_sample, uncertain_point_coords
from maskformer.losses.weights import default_loss_weights, weighted_total

__all__ = [
    "HungarianMatcher",
    "SetCriterion",
    "build_criterion",
    "default_loss_weights",
    "dice_loss",
    "pairwise_class_cost",
    "pairwise_dice_cost",
    "pairwise_focal_cost",
    "point_sample",
    "sigmoid_focal_loss",
    "uncertain_point_coords",
    "weighted_total",
]
