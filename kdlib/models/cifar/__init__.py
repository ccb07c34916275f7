"""CIFAR models: RepDistiller's 22-architecture zoo (module per RepDistiller file) and the CD paper's
torchvision-style bottleneck pair (``resnet_cifar_bottleneck``). All default to 100 classes and share
``forward(x, with_features=False, preact=False)``."""
