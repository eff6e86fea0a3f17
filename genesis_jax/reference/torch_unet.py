"""A PyTorch UNet3D written from GUIDE.md section 3, with the official module names: the
counterpart for the interop tests and the PyTorch side of benchmarks/train_step.py.
`always_batch_stats` reproduces ContBatchNorm3d."""

import torch
import torch.nn.functional as F
from torch import nn


class ContBatchNorm3d(nn.BatchNorm3d):
    """BatchNorm that always normalises with batch statistics, also in eval."""

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            True, self.momentum, self.eps)


class LUConv(nn.Module):
    def __init__(self, in_ch, out_ch, bn):
        super().__init__()
        self.conv1 = nn.Conv3d(in_ch, out_ch, kernel_size=3, padding=1)
        self.bn1 = bn(out_ch)

    def forward(self, x):
        return F.relu(self.bn1(self.conv1(x)))


class Down(nn.Module):
    def __init__(self, in_ch, depth, width, bn):
        super().__init__()
        out1 = width * 2 ** depth
        self.ops = nn.Sequential(LUConv(in_ch, out1, bn), LUConv(out1, 2 * out1, bn))

    def forward(self, x):
        return self.ops(x)


class Up(nn.Module):
    def __init__(self, in_ch, out_ch, depth, width, bn):
        super().__init__()
        mid = width * 2 ** (depth + 1)
        self.up_conv = nn.ConvTranspose3d(in_ch, out_ch, kernel_size=2, stride=2)
        self.ops = nn.Sequential(LUConv(out_ch + out_ch // 2, mid, bn), LUConv(mid, mid, bn))

    def forward(self, x, skip):
        return self.ops(torch.cat((self.up_conv(x), skip), 1))


class Out(nn.Module):
    def __init__(self, in_ch, n_class):
        super().__init__()
        self.final_conv = nn.Conv3d(in_ch, n_class, kernel_size=1)

    def forward(self, x):
        return torch.sigmoid(self.final_conv(x))


class TorchUNet3D(nn.Module):
    def __init__(self, n_class=1, width=32, always_batch_stats=True, in_channels=1):
        super().__init__()
        bn = ContBatchNorm3d if always_batch_stats else nn.BatchNorm3d
        w = width
        self.down_tr64 = Down(in_channels, 0, w, bn)
        self.down_tr128 = Down(2 * w, 1, w, bn)
        self.down_tr256 = Down(4 * w, 2, w, bn)
        self.down_tr512 = Down(8 * w, 3, w, bn)
        self.up_tr256 = Up(16 * w, 16 * w, 2, w, bn)
        self.up_tr128 = Up(8 * w, 8 * w, 1, w, bn)
        self.up_tr64 = Up(4 * w, 4 * w, 0, w, bn)
        self.out_tr = Out(2 * w, n_class)

    def forward(self, x):
        s64 = self.down_tr64(x)
        s128 = self.down_tr128(F.max_pool3d(s64, 2))
        s256 = self.down_tr256(F.max_pool3d(s128, 2))
        x = self.down_tr512(F.max_pool3d(s256, 2))
        x = self.up_tr256(x, s256)
        x = self.up_tr128(x, s128)
        return self.out_tr(self.up_tr64(x, s64))
