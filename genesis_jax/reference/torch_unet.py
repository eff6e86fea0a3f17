"""A PyTorch UNet3D written from GUIDE.md section 3, with the official module names: the
counterpart for the interop tests and the PyTorch side of benchmarks/train_step.py.
`always_batch_stats` reproduces ContBatchNorm3d. dims=2: its 2D counterpart (Conv2d,
BatchNorm2d, 2x2 pooling and transposed convolutions), the UNet2D of Models Genesis 2D."""

import torch
import torch.nn.functional as F
from torch import nn


class ContBatchNorm3d(nn.BatchNorm3d):
    """BatchNorm that always normalises with batch statistics, also in eval."""

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            True, self.momentum, self.eps)


class ContBatchNorm2d(nn.BatchNorm2d):
    """ContBatchNorm3d's 2D counterpart."""

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            True, self.momentum, self.eps)


# By dims: (convolution, transposed convolution, max pooling, (BatchNorm, ContBatchNorm))
LAYERS = {3: (nn.Conv3d, nn.ConvTranspose3d, F.max_pool3d, (nn.BatchNorm3d, ContBatchNorm3d)),
          2: (nn.Conv2d, nn.ConvTranspose2d, F.max_pool2d, (nn.BatchNorm2d, ContBatchNorm2d))}


class LUConv(nn.Module):
    def __init__(self, in_ch, out_ch, bn, conv=nn.Conv3d):
        super().__init__()
        self.conv1 = conv(in_ch, out_ch, kernel_size=3, padding=1)
        self.bn1 = bn(out_ch)

    def forward(self, x):
        return F.relu(self.bn1(self.conv1(x)))


class Down(nn.Module):
    def __init__(self, in_ch, depth, width, bn, conv=nn.Conv3d):
        super().__init__()
        out1 = width * 2 ** depth
        self.ops = nn.Sequential(LUConv(in_ch, out1, bn, conv), LUConv(out1, 2 * out1, bn, conv))

    def forward(self, x):
        return self.ops(x)


class Up(nn.Module):
    def __init__(self, in_ch, out_ch, depth, width, bn, conv=nn.Conv3d, upconv=nn.ConvTranspose3d):
        super().__init__()
        mid = width * 2 ** (depth + 1)
        self.up_conv = upconv(in_ch, out_ch, kernel_size=2, stride=2)
        self.ops = nn.Sequential(LUConv(out_ch + out_ch // 2, mid, bn, conv), LUConv(mid, mid, bn, conv))

    def forward(self, x, skip):
        return self.ops(torch.cat((self.up_conv(x), skip), 1))


class Out(nn.Module):
    def __init__(self, in_ch, n_class, conv=nn.Conv3d):
        super().__init__()
        self.final_conv = conv(in_ch, n_class, kernel_size=1)

    def forward(self, x):
        return torch.sigmoid(self.final_conv(x))


class TorchUNet3D(nn.Module):
    def __init__(self, n_class=1, width=32, always_batch_stats=True, in_channels=1, dims=3):
        super().__init__()
        conv, upconv, self.pool, norms = LAYERS[dims]
        bn = norms[1] if always_batch_stats else norms[0]
        w = width
        self.down_tr64 = Down(in_channels, 0, w, bn, conv)
        self.down_tr128 = Down(2 * w, 1, w, bn, conv)
        self.down_tr256 = Down(4 * w, 2, w, bn, conv)
        self.down_tr512 = Down(8 * w, 3, w, bn, conv)
        self.up_tr256 = Up(16 * w, 16 * w, 2, w, bn, conv, upconv)
        self.up_tr128 = Up(8 * w, 8 * w, 1, w, bn, conv, upconv)
        self.up_tr64 = Up(4 * w, 4 * w, 0, w, bn, conv, upconv)
        self.out_tr = Out(2 * w, n_class, conv)

    def forward(self, x):
        s64 = self.down_tr64(x)
        s128 = self.down_tr128(self.pool(s64, 2))
        s256 = self.down_tr256(self.pool(s128, 2))
        x = self.down_tr512(self.pool(s256, 2))
        x = self.up_tr256(x, s256)
        x = self.up_tr128(x, s128)
        return self.out_tr(self.up_tr64(x, s64))
