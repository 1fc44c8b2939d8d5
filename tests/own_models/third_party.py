"""Models written by others, from packages installed as test dependencies (torch alone, no torchvision).

- MONAI's UNet (Apache-2.0): a residual U-Net segmenter, fully convolutional.
- MONAI's BasicUNetPlusPlus (Apache-2.0): UNet++ with deep supervision; returns a list of four logit maps.
- lukemelas' EfficientNet-B0 (efficientnet-pytorch, Apache-2.0): a classifier, task none.
- HuggingFace's SegFormer (transformers, Apache-2.0), a small configuration: a transformer segmenter whose
  forward takes `pixel_values` and returns a ModelOutput with logits at a quarter of the input's size.
"""


def monai_unet(classes: int = 3):
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=3, out_channels=classes, channels=(8, 16, 32, 64), strides=(2, 2, 2),
                num_res_units=1)


def monai_unet_plus_plus(classes: int = 2):
    from monai.networks.nets import BasicUNetPlusPlus

    return BasicUNetPlusPlus(spatial_dims=2, in_channels=3, out_channels=classes, features=(8, 8, 16, 32, 64, 8),
                             deep_supervision=True)


def efficientnet_b0(classes: int = 10, size: int = 96):
    from efficientnet_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-b0", image_size=size, num_classes=classes)


def segformer(classes: int = 3):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                             num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2],
                             decoder_hidden_size=16, num_labels=classes)
    return SegformerForSemanticSegmentation(config)
