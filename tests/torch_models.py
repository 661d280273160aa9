"""PyTorch twins of the feed-forward example specs, built by hand from torch.nn.

Each builder returns an nn.Module laid out as the paper (or torchvision, where the spec
follows torchvision) lays it out, so its parameters (count and shapes) and its output
shape are an independent check on what netdsl infers for the matching file in specs/.
torchvision itself is not a dependency: the torchvision layouts are rebuilt here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MODELS", "param_count", "PUBLISHED"]

# Parameter counts published by torchvision for its models.
PUBLISHED = {
    "alexnet": 61_100_840,
    "vgg16": 138_357_544,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "densenet121": 7_978_856,
}


def param_count(model: nn.Module) -> int:
    """Learned parameters only: batchnorm running statistics are buffers, not parameters."""
    return sum(p.numel() for p in model.parameters())


# ---- linear models and MLPs


def perceptron() -> nn.Module:
    return nn.Linear(64, 1)


def logistic_regression() -> nn.Module:
    return nn.Linear(64, 1)


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10),
    )


def autoencoder() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 32), nn.ReLU(),
        nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 784), nn.Sigmoid(),
    )


def conv_autoencoder() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2),
        nn.Conv2d(32, 1, 3, padding=1), nn.Sigmoid(),
    )


class VAE(nn.Module):
    """Kingma & Welling's MNIST VAE; `losses` is the negative ELBO per example, in two terms."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(784, 400)
        self.mu = nn.Linear(400, 20)
        self.logvar = nn.Linear(400, 20)
        self.decoder = nn.Sequential(
            nn.Linear(20, 400), nn.ReLU(), nn.Linear(400, 784), nn.Sigmoid()
        )

    def forward(self, x):
        h = torch.relu(self.hidden(x))
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.decoder(z), mu, logvar

    def losses(self, x, eps):
        """Reconstruction cross-entropy summed over the pixels and KL divergence summed over
        the latent dimensions, each averaged over the batch; `eps` is the N(0, I) sample."""
        h = torch.relu(self.hidden(x))
        mu, logvar = self.mu(h), self.logvar(h)
        logits = self.decoder[:-1](mu + torch.exp(0.5 * logvar) * eps)  # the loss applies the sigmoid
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)
        kl = -0.5 * torch.sum(1 + logvar - mu * mu - torch.exp(logvar)) / len(x)
        return {"recon": recon, "kl": kl}


class GAN(nn.Module):
    """Generator and discriminator; each is counted once however often it is applied."""

    def __init__(self):
        super().__init__()
        self.G = nn.Sequential(
            nn.Linear(100, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(),
            nn.Linear(512, 784), nn.Tanh(),
        )
        self.D = nn.Sequential(
            nn.Linear(784, 512), nn.LeakyReLU(0.2), nn.Linear(512, 256), nn.LeakyReLU(0.2),
            nn.Linear(256, 1),
        )


# ---- classic CNNs


def lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


def alexnet() -> nn.Module:
    # torchvision's layout; its AdaptiveAvgPool2d((6, 6)) is the identity at 224x224
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(),
        nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000),
    )


VGG16_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512, "M"]


def vgg16_features(first_pad: int = 1, ceil: bool = False) -> nn.Sequential:
    layers, channels = [], 3
    for item in VGG16_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=ceil))
        else:
            pad = first_pad if channels == 3 else 1
            layers += [nn.Conv2d(channels, item, 3, padding=pad), nn.ReLU()]
            channels = item
    return nn.Sequential(*layers)


def vgg16() -> nn.Module:
    return nn.Sequential(
        vgg16_features(), nn.Flatten(),
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 1000),
    )


def nin() -> nn.Module:
    def mlpconv(c_in, c, k, c1, c2):
        return [nn.Conv2d(c_in, c, k, padding=(k - 1) // 2), nn.ReLU(),
                nn.Conv2d(c, c1, 1), nn.ReLU(), nn.Conv2d(c1, c2, 1), nn.ReLU()]

    return nn.Sequential(
        *mlpconv(3, 192, 5, 160, 96), nn.MaxPool2d(3, 2, padding=1), nn.Dropout(),
        *mlpconv(96, 192, 5, 192, 192), nn.MaxPool2d(3, 2, padding=1), nn.Dropout(),
        *mlpconv(192, 192, 3, 192, 10), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


# ---- GoogLeNet as in the paper: 5x5 branches, biases, no batchnorm, no LRN


class Inception(nn.Module):
    def __init__(self, c_in, c1, c3r, c3, c5r, c5, pp):
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(c_in, c1, 1), nn.ReLU())
        self.b3 = nn.Sequential(nn.Conv2d(c_in, c3r, 1), nn.ReLU(),
                                nn.Conv2d(c3r, c3, 3, padding=1), nn.ReLU())
        self.b5 = nn.Sequential(nn.Conv2d(c_in, c5r, 1), nn.ReLU(),
                                nn.Conv2d(c5r, c5, 5, padding=2), nn.ReLU())
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, padding=1), nn.Conv2d(c_in, pp, 1), nn.ReLU())

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


def aux_classifier(c_in: int) -> nn.Module:
    return nn.Sequential(
        nn.AvgPool2d(5, stride=3), nn.Conv2d(c_in, 128, 1), nn.ReLU(), nn.Flatten(),
        nn.Linear(128 * 4 * 4, 1024), nn.ReLU(), nn.Dropout(0.7), nn.Linear(1024, 1000),
    )


class GoogLeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(64, 64, 1), nn.ReLU(), nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(3, 2, ceil_mode=True),
        )
        self.i3 = nn.Sequential(Inception(192, 64, 96, 128, 16, 32, 32),
                                Inception(256, 128, 128, 192, 32, 96, 64),
                                nn.MaxPool2d(3, 2, ceil_mode=True))
        self.i4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.i4bcd = nn.Sequential(Inception(512, 160, 112, 224, 24, 64, 64),
                                   Inception(512, 128, 128, 256, 24, 64, 64),
                                   Inception(512, 112, 144, 288, 32, 64, 64))
        self.i4e = nn.Sequential(Inception(528, 256, 160, 320, 32, 128, 128),
                                 nn.MaxPool2d(3, 2, ceil_mode=True))
        self.i5 = nn.Sequential(Inception(832, 256, 160, 320, 32, 128, 128),
                                Inception(832, 384, 192, 384, 48, 128, 128))
        self.head = nn.Sequential(nn.AvgPool2d(7), nn.Flatten(), nn.Dropout(0.4),
                                  nn.Linear(1024, 1000))
        self.aux1 = aux_classifier(512)
        self.aux2 = aux_classifier(528)

    def forward(self, x):
        a = self.i4a(self.i3(self.stem(x)))
        d = self.i4bcd(a)
        return self.head(self.i5(self.i4e(d))), self.aux1(a), self.aux2(d)


def googlenet() -> nn.Module:
    return GoogLeNet()


# ---- ResNets in torchvision's layout


def conv_bn(c_in, c_out, k, stride=1, pad=0):
    return [nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, bias=False),
            nn.BatchNorm2d(c_out)]


class Residual(nn.Module):
    """relu(body(x) + shortcut(x)); the shortcut is a 1x1 conv + BN when shapes change."""

    def __init__(self, body, c_in, c_out, stride):
        super().__init__()
        self.body = nn.Sequential(*body)
        change = stride != 1 or c_in != c_out
        self.shortcut = nn.Sequential(*conv_bn(c_in, c_out, 1, stride)) if change else nn.Identity()

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


def basic(c_in, c, stride=1):
    body = [*conv_bn(c_in, c, 3, stride, 1), nn.ReLU(), *conv_bn(c, c, 3, 1, 1)]
    return Residual(body, c_in, c, stride)


def bottleneck(c_in, c, stride=1):
    body = [*conv_bn(c_in, c, 1), nn.ReLU(), *conv_bn(c, c, 3, stride, 1), nn.ReLU(),
            *conv_bn(c, 4 * c, 1)]
    return Residual(body, c_in, 4 * c, stride)


def _resnet(block, expansion, depths, widths, stem, c_in, classes):
    layers = list(stem)
    for stage, (n, c) in enumerate(zip(depths, widths)):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            layers.append(block(c_in, c, stride))
            c_in = c * expansion
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, classes))


def imagenet_stem() -> list[nn.Module]:
    return [*conv_bn(3, 64, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1)]


def resnet18() -> nn.Module:
    return _resnet(basic, 1, [2, 2, 2, 2], [64, 128, 256, 512], imagenet_stem(), 64, 1000)


def resnet34() -> nn.Module:
    return _resnet(basic, 1, [3, 4, 6, 3], [64, 128, 256, 512], imagenet_stem(), 64, 1000)


def resnet50() -> nn.Module:
    return _resnet(bottleneck, 4, [3, 4, 6, 3], [64, 128, 256, 512], imagenet_stem(), 64, 1000)


def resnet20() -> nn.Module:
    stem = [*conv_bn(3, 16, 3, 1, 1), nn.ReLU()]
    return _resnet(basic, 1, [3, 3, 3], [16, 32, 64], stem, 16, 10)


# ---- DenseNet-121 in torchvision's layout


class DenseLayer(nn.Module):
    def __init__(self, c_in, k, bn_size=4):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, bn_size * k, 1, bias=False),
            nn.BatchNorm2d(bn_size * k), nn.ReLU(), nn.Conv2d(bn_size * k, k, 3, padding=1, bias=False),
        )

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


def densenet121(k: int = 32, blocks=(6, 12, 24, 16)) -> nn.Module:
    layers, c = [*conv_bn(3, 64, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1)], 64
    for index, n in enumerate(blocks):
        for _ in range(n):
            layers.append(DenseLayer(c, k))
            c += k
        if index < len(blocks) - 1:
            layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False),
                       nn.AvgPool2d(2)]
            c //= 2
    layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(c, 1000)]
    return nn.Sequential(*layers)


# ---- segmentation


def center_crop(x, like):
    h, w = like.shape[-2:]
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top:top + h, left:left + w]


class FCN8s(nn.Module):
    """FCN-8s on VGG-16: conv1_1 padded by 100, fc6/fc7 as convolutions, two skips."""

    def __init__(self, classes: int = 21):
        super().__init__()
        features = vgg16_features(first_pad=100, ceil=True)
        self.to_pool3, self.to_pool4, self.to_pool5 = features[:17], features[17:24], features[24:]
        self.fc = nn.Sequential(nn.Conv2d(512, 4096, 7), nn.ReLU(), nn.Dropout(),
                                nn.Conv2d(4096, 4096, 1), nn.ReLU(), nn.Dropout(),
                                nn.Conv2d(4096, classes, 1))
        self.score_pool4 = nn.Conv2d(512, classes, 1)
        self.score_pool3 = nn.Conv2d(256, classes, 1)
        self.up2 = nn.ConvTranspose2d(classes, classes, 4, stride=2, bias=False)
        self.up2_pool4 = nn.ConvTranspose2d(classes, classes, 4, stride=2, bias=False)
        self.up8 = nn.ConvTranspose2d(classes, classes, 16, stride=8, bias=False)

    def forward(self, x):
        pool3 = self.to_pool3(x)
        pool4 = self.to_pool4(pool3)
        s = self.up2(self.fc(self.to_pool5(pool4)))
        s = s + center_crop(self.score_pool4(pool4), s)
        s = self.up2_pool4(s)
        s = s + center_crop(self.score_pool3(pool3), s)
        return center_crop(self.up8(s), x)


def fcn8s() -> nn.Module:
    return FCN8s()


class UNet(nn.Module):
    """Ronneberger et al.'s U-Net: valid 3x3 convolutions, crop-and-concatenate skips.

    31,030,658 parameters. The 31,031,685 often quoted is zhixuhao's Keras U-Net, which
    ends with an extra 3x3 convolution to 2 channels and a 1x1 to 1 (1,154 + 3 weights
    instead of the paper's 1x1 to 2 classes, 130).
    """

    def __init__(self, widths=(64, 128, 256, 512, 1024), classes: int = 2):
        super().__init__()

        def double_conv(c_in, c):
            return nn.Sequential(nn.Conv2d(c_in, c, 3), nn.ReLU(), nn.Conv2d(c, c, 3), nn.ReLU())

        c_in, self.down = 1, nn.ModuleList()
        for c in widths:
            self.down.append(double_conv(c_in, c))
            c_in = c
        self.ups, self.up_convs = nn.ModuleList(), nn.ModuleList()
        for c in reversed(widths[:-1]):
            self.ups.append(nn.ConvTranspose2d(c_in, c, 2, stride=2))
            self.up_convs.append(double_conv(2 * c, c))
            c_in = c
        self.score = nn.Conv2d(c_in, classes, 1)

    def forward(self, x):
        skips = []
        for index, stage in enumerate(self.down):
            if index:
                x = nn.functional.max_pool2d(x, 2)
            x = stage(x)
            skips.append(x)
        skips.pop()
        for up, convs in zip(self.ups, self.up_convs):
            u = up(x)
            x = convs(torch.cat([center_crop(skips.pop(), u), u], 1))
        return self.score(x)


def unet() -> nn.Module:
    return UNet()


def skipgram() -> nn.Module:
    # word2vec at a vocabulary of 50: the test shrinks the spec's 2,000 words
    return nn.Sequential(nn.Embedding(50, 64), nn.Linear(64, 50))


MODELS = {
    "skipgram": skipgram,
    "perceptron": perceptron,
    "logistic_regression": logistic_regression,
    "mlp": mlp,
    "lenet5": lenet5,
    "alexnet": alexnet,
    "vgg16": vgg16,
    "nin": nin,
    "googlenet": googlenet,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet20": resnet20,
    "densenet121": densenet121,
    "fcn8s": fcn8s,
    "unet": unet,
    "autoencoder": autoencoder,
    "conv_autoencoder": conv_autoencoder,
    "vae": VAE,
    "gan": GAN,
}
