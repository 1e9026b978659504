"""Data: LightningDataModules for Fashion-MNIST, CIFAR and ImageFolder; batched on-device augmentation."""
