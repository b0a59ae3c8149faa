"""Small real models trained on scikit-learn's bundled digits set (no downloads).

DigitsCNN is the bundled sample (edgekit/samples); MobileNetish has depthwise-separable blocks,
batch norm and ReLU6 like MobileNet, at a size that converts in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def digits_data(seed: int = 0, size: int = 8):
    """(x_train, y_train, x_test, y_test), float32 NCHW scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    if size != 8:
        reps = size // 8
        x = x.repeat(reps, axis=2).repeat(reps, axis=3)
    y = d.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)


def _nets():
    import torch
    from torch import nn

    class DigitsCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

        def forward(self, x):
            return self.head(self.features(x))

    def dw_block(cin, cout, stride):
        return nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU6(),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(),
        )

    class MobileNetish(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
            self.blocks = nn.Sequential(
                dw_block(32, 64, 2), dw_block(64, 128, 2), dw_block(128, 128, 1), dw_block(128, 256, 1)
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(256, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))

    def inverted_residual(cin, cout, stride, expand):
        hidden = cin * expand
        layers = (
            [] if expand == 1 else [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        )
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        body = nn.Sequential(*layers)

        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.body, self.residual = body, stride == 1 and cin == cout

            def forward(self, x):
                return x + self.body(x) if self.residual else self.body(x)

        return Block()

    class MobileNetV2(nn.Module):
        """The MobileNetV2 architecture (width 1.0, 3.5 M parameters at 1000 classes), 1 input channel."""

        CONFIG = (
            (1, 16, 1, 1),
            (6, 24, 2, 2),
            (6, 32, 3, 2),
            (6, 64, 4, 2),
            (6, 96, 3, 1),
            (6, 160, 3, 2),
            (6, 320, 1, 1),
        )

        def __init__(self, classes: int = 10):
            super().__init__()
            layers = [nn.Conv2d(1, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
            cin = 32
            for t, c, n, s in self.CONFIG:
                for i in range(n):
                    layers.append(inverted_residual(cin, c, s if i == 0 else 1, t))
                    cin = c
            layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Linear(1280, classes)

        def forward(self, x):
            return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))

    return DigitsCNN, MobileNetish, MobileNetV2


def train(kind: str = "cnn", epochs: int = 15, seed: int = 0, size: int = 8):
    """Train and return (model in eval mode, test accuracy, (x_test, y_test), x_train)."""
    import torch

    torch.manual_seed(seed)
    # The thread count changes reduction order, hence the trained weights: pin it so every machine
    # (any core count) trains the same model and int8 bounds mean the same thing everywhere.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        return _train(kind, epochs, seed, size)
    finally:
        torch.set_num_threads(threads)


def _train(kind: str, epochs: int, seed: int, size: int):
    import torch

    x_tr, x_te, y_tr, y_te = digits_data(seed, size)
    DigitsCNN, MobileNetish, MobileNetV2 = _nets()
    model = {"cnn": DigitsCNN, "mobilenetish": MobileNetish, "mobilenetv2": MobileNetV2}[kind]()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean())
    return model, acc, (x_te, y_te), x_tr


def export_onnx(model, path: Path, size: int = 8) -> Path:
    import torch

    torch.onnx.export(
        model,
        (torch.zeros(1, 1, size, size),),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
    )
    return path
