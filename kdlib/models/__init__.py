"""kdlib's model zoo: RepDistiller's CIFAR architectures, the CD paper's CIFAR ResNets, torchvision backbones.

>>> model = create_model("resnet8x4")                 # 100 classes (CIFAR-100 default)
>>> logits, feats = model(x, with_features=True)       # feats = [stem, stage_1, ..., stage_N, pooled]
>>> teacher = load_teacher("resnet32x4.pth", name="resnet32x4")

``feats[1:-1]`` are the stage outputs, ``feats[-2]`` the last stage output, ``feats[-1]`` the pooled vector
fed to the classifier. See ``kdlib.models.registry`` for the checkpoint formats.
"""

from kdlib.models.registry import (
    CIFAR_CLASSES,
    IMAGENET_CLASSES,
    CheckpointError,
    ModelSpec,
    available,
    checkpoint_arch,
    create_model,
    default_num_classes,
    feature_shapes,
    load_teacher,
    model_spec,
    read_checkpoint,
)

__all__ = [
    "CIFAR_CLASSES",
    "IMAGENET_CLASSES",
    "CheckpointError",
    "ModelSpec",
    "available",
    "checkpoint_arch",
    "create_model",
    "default_num_classes",
    "feature_shapes",
    "load_teacher",
    "model_spec",
    "read_checkpoint",
]
