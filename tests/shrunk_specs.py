"""Smaller stand-ins of the specs whose inputs are ImageNet-sized, for the cross-checks
that run every spec: the same layers and blocks on a smaller input and, where the padding
or the widths keep even that large, fewer channels. Each is a list of (old, new) edits of
the spec's text, every one of which must still match; a test that runs a stand-in builds
its twin to match (test_train_torch's `narrowed`)."""
from pathlib import Path

FCN8S_WIDTHS = {64: 8, 128: 16, 256: 32, 512: 64, 4096: 64}
UNET_WIDTHS = {64: 8, 128: 16, 256: 32, 512: 64, 1024: 128}

EDITS = {
    # 99x99 leaves [256, 2, 2] to flatten; the 4096-wide layers become 256 wide
    "alexnet": (("[3, 224, 224]", "[3, 99, 99]"), ("dense(4096)", "dense(256)")),
    # 32x32 leaves [512, 1, 1] to flatten
    "vgg16": (("[3, 224, 224]", "[3, 32, 32]"), ("dense(4096)", "dense(256)")),
    "googlenet": (("[3, 224, 224]", "[3, 96, 96]"),),
    # 48x48: stages at 12, 6, 3 and 2 pixels, so the last batchnorm still sees 8 values
    # per channel, and the stride-2 convolutions meet an odd size
    "resnet18": (("[3, 224, 224]", "[3, 48, 48]"),),
    "resnet34": (("[3, 224, 224]", "[3, 48, 48]"),),
    "resnet50": (("[3, 224, 224]", "[3, 48, 48]"),),
    "densenet121": (("[3, 224, 224]", "[3, 64, 64]"),),
    # the 100-pixel padding makes even a small image large, so the widths shrink by 8
    # (fc6 and fc7 to 64) and the input to 32x32
    "fcn8s": (("[3, 224, 224]", "[3, 32, 32]"), ("class(21)[224, 224]", "class(21)[32, 32]"),
              ("conv3(64, pad=100) -> conv3(64)", "conv3(8, pad=100) -> conv3(8)"),
              ("stage(128, 2)", "stage(16, 2)"), ("stage(256, 3)", "stage(32, 3)"),
              ("stage(512, 3)", "stage(64, 3)"), ("conv(4096, 7)", "conv(64, 7)"),
              ("conv(4096, 1)", "conv(64, 1)")),
    # 188x188 is the smallest tile whose crops are all valid (a 4x4 segmentation); the
    # widths shrink by 8
    "unet": (("[1, 572, 572]", "[1, 188, 188]"), ("class(2)[388, 388]", "class(2)[4, 4]"),
             *((f"double_conv({n})", f"double_conv({m})") for n, m in UNET_WIDTHS.items())),
}


def shrunk_text(path) -> str:
    """The text of the spec at `path`, its stand-in's where it has one."""
    path = Path(path)
    text = path.read_text()
    for old, new in EDITS.get(path.stem, ()):
        assert old in text, f"{path.name} no longer contains {old!r}"
        text = text.replace(old, new)
    return text
