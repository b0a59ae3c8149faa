"""Five real architectures built here, trained briefly on digits-derived data, exported as users do.

Issue 9 asks `convert` to handle models shaped like the ones users bring, not like the bundled
sample. Each builder trains a small instance of a real architecture (int8 on random weights says
nothing, see shared/notes/stack.md), exports it with the TorchScript exporter (`dynamo=False`,
`dynamic_axes` as real exporters write them) and writes calibration/eval `.npz` files in edgekit's
data convention (converters/data.py):

- crnn: text recognizer, `x: float[N,3,32,W]` (dynamic batch and width), conv stack -> mean over
  height -> BiLSTM -> per-timestep logits `[N,T,11]`; reads 4-digit strings.
- encoder: transformer text encoder, `input_ids` / `attention_mask` int64 `[batch, seq]`, 2 post-LN
  layers (LayerNorm, erf GELU, softmax attention, BERT's additive mask), masked-mean pooled classifier.
- stepper: a 2-layer GRU stepped on chunks, no batch axis: `x.1: [T,8]`, `state.1: [2,1,32]` ->
  (logits `[T,10]`, new state); names are what `torch.jit.script` + export writes.
- static4: CNN with a static batch of 4, `[4,1,16,16]`, no dynamic axes and no names given
  (input `onnx::Sub_0`, a numeric output name).
- detector: single-shot detector head, `images: [N,3,32,32]` -> `boxes [N,64,4]` (decoded against
  an 8x8 grid) and `scores [N,64,10]`.

Data files: the calibration set is drawn from training data, the eval set from held-out data.
Everything is seeded; training runs on one thread so the weights do not depend on the machine's
thread count. Total build time is a few tens of seconds on 2 cores.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NAMES = ("crnn", "encoder", "stepper", "static4", "detector")
SEED = 0
BLANK = 10  # CRNN's extra class between characters (CTC-style alphabet: 10 digits + blank)
STEPPER_HIDDEN = 32
CRNN_WIDTH = 128  # 4 digits of 32 px: the width the data pins; the model takes any width


@dataclass
class RealModel:
    """One built model: its ONNX file, the torch module it came from, and its data files."""

    name: str
    onnx: Path
    module: Any  # torch.nn.Module in eval mode, taking the ONNX inputs in order
    input_names: list[str]  # ONNX graph input names, in the module's argument order
    calib: Path
    eval: Path
    # Inputs that pin every dim a static target needs but the data cannot (convert's `input_shapes`).
    input_shapes: dict[str, list] | None = None
    # Extra feeds (ONNX names -> arrays) that exercise the dynamic axes beyond the data's shapes.
    probe_feeds: list[dict[str, np.ndarray]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # held-out accuracy, build seconds


# ---------------------------------------------------------------- data


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): 8x8 digit images in [0, 1], stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, d.target.astype(np.int64), test_size=0.2, random_state=SEED, stratify=d.target
    )
    return x_tr, y_tr, x_te, y_te


def upscale(x: np.ndarray, k: int) -> np.ndarray:
    return x.repeat(k, axis=-2).repeat(k, axis=-1)


def digit_strings(x: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator, length: int = 4):
    """`n` text lines of `length` digits, 32 px each: images `[n,3,32,32*length]` and the per-timestep
    labels a CRNN with a 4x horizontal stride should emit (8 timesteps per digit)."""
    idx = rng.integers(0, len(x), size=(n, length))
    glyphs = upscale(x[idx], 4)  # [n, length, 32, 32]
    lines = np.concatenate(list(glyphs.transpose(1, 0, 2, 3)), axis=-1)  # [n, 32, 32*length]
    # colour and contrast vary per line so the three channels carry different values
    tint = rng.uniform(0.6, 1.0, size=(n, 3, 1, 1)).astype(np.float32)
    images = (lines[:, None] * tint).astype(np.float32)
    return images, y[idx].repeat(8, axis=1)


def token_sequences(x: np.ndarray, rng: np.random.Generator):
    """Digits as token sequences: pixel value + 1 (ids 1..17, 0 is padding), row by row; each
    sequence keeps the first 6-8 rows and is right-padded to 64 with attention_mask 0."""
    ids = (np.round(x * 16).astype(np.int64) + 1).reshape(len(x), 64)
    keep = rng.integers(6, 9, size=len(x)) * 8
    mask = (np.arange(64)[None, :] < keep[:, None]).astype(np.int64)
    return ids * mask, mask


def detection_scenes(x: np.ndarray, y: np.ndarray, rng: np.random.Generator):
    """One 16x16 digit per 32x32 RGB scene at a random place: images, (cx, cy, w, h) in [0,1], class."""
    n = len(x)
    scenes = np.zeros((n, 3, 32, 32), np.float32)
    ox, oy = rng.integers(0, 17, size=n), rng.integers(0, 17, size=n)
    glyphs = upscale(x, 2)
    colour = rng.uniform(0.5, 1.0, size=(n, 3, 1, 1)).astype(np.float32)
    for i in range(n):
        scenes[i, :, oy[i] : oy[i] + 16, ox[i] : ox[i] + 16] = glyphs[i] * colour[i]
    boxes = np.stack([(ox + 8) / 32, (oy + 8) / 32, np.full(n, 0.5), np.full(n, 0.5)], 1).astype(np.float32)
    return scenes, boxes, y


# ---------------------------------------------------------------- training


@contextlib.contextmanager
def one_thread(seed: int = SEED) -> Iterator[None]:
    """Seeded, single-threaded torch: the same weights on every machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit(
    model, loss_fn: Callable[..., Any], tensors: list[Any], epochs: int, lr: float = 3e-3, batch: int = 64
) -> None:
    """Adam over shuffled mini-batches; `loss_fn(model, *batch_tensors)` returns the loss."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * -(-len(tensors[0]) // batch)
    )
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(tensors[0]))
        for i in range(0, len(perm), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            loss_fn(model, *(t[idx] for t in tensors)).backward()
            opt.step()
            sched.step()
    model.eval()


def export(module, args: tuple, path: Path, **kwargs) -> Path:
    """torch.onnx.export the way users call it: the TorchScript exporter."""
    import torch

    with warnings.catch_warnings():  # the legacy-exporter deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, **kwargs)
    return path


def onnx_input_names(path: Path) -> list[str]:
    import onnx

    m = onnx.load(str(path))
    inits = {i.name for i in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in inits]


# ---------------------------------------------------------------- architectures


def _crnn():
    from torch import nn

    def block(cin, cout, pool):
        return [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.MaxPool2d(pool),
        ]

    class CRNN(nn.Module):
        def __init__(self, classes: int = BLANK + 1, hidden: int = 48):
            super().__init__()
            # height 32 -> 16 -> 8 -> 4, width W -> W/2 -> W/4 -> W/4: one timestep per 4 px
            self.cnn = nn.Sequential(*block(3, 16, 2), *block(16, 32, 2), *block(32, 64, (2, 1)))
            self.rnn = nn.LSTM(64, hidden, batch_first=True, bidirectional=True)
            self.fc = nn.Linear(2 * hidden, classes)

        def forward(self, x):
            f = self.cnn(x).mean(2)  # collapse height: [N, C, T]
            seq, _ = self.rnn(f.permute(0, 2, 1))
            return self.fc(seq)  # [N, T, classes]

    return CRNN


def _encoder():
    import math

    import torch
    from torch import nn

    class Layer(nn.Module):
        """A BERT encoder layer (post-LN) written as HF writes it, so the export has its ops."""

        def __init__(self, d: int, heads: int, ffn: int):
            super().__init__()
            self.heads, self.dh = heads, d // heads
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.ff = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d))

        def split(self, t):
            b, s, _ = t.shape
            return t.view(b, s, self.heads, self.dh).transpose(1, 2)

        def forward(self, h, bias):
            b, s, d = h.shape
            scores = self.split(self.q(h)) @ self.split(self.k(h)).transpose(-1, -2) / math.sqrt(self.dh)
            att = torch.softmax(scores + bias, dim=-1) @ self.split(self.v(h))
            h = self.ln1(h + self.o(att.transpose(1, 2).reshape(b, s, d)))
            return self.ln2(h + self.ff(h))

    class Encoder(nn.Module):
        def __init__(self, vocab: int = 18, d: int = 32, heads: int = 4, ffn: int = 64, classes: int = 10):
            super().__init__()
            self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(128, d)
            self.register_buffer("position_ids", torch.arange(128)[None], persistent=False)
            self.ln = nn.LayerNorm(d)
            self.layers = nn.ModuleList(Layer(d, heads, ffn) for _ in range(2))
            self.cls = nn.Linear(d, classes)

        def forward(self, input_ids, attention_mask):
            pos = self.position_ids[:, : input_ids.shape[1]]
            h = self.ln(self.tok(input_ids) + self.pos(pos))
            m = attention_mask.to(h.dtype)
            bias = (1.0 - m[:, None, None, :]) * -10000.0  # BERT's extended attention mask
            for layer in self.layers:
                h = layer(h, bias)
            pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1.0)
            return self.cls(pooled)

    return Encoder


def _stepper():
    from torch import nn

    class Stepper(nn.Module):
        """A streaming GRU: trained batched (seq-first), stepped one chunk at a time without a batch."""

        def __init__(self, features: int = 8, hidden: int = STEPPER_HIDDEN, classes: int = 10):
            super().__init__()
            self.gru = nn.GRU(features, hidden, num_layers=2)
            self.head = nn.Linear(hidden, classes)

        def batched(self, x, state):  # x [T, B, F], state [2, B, H]
            y, h = self.gru(x, state)
            return self.head(y), h

        def forward(self, x, state):  # x [T, F], state [2, 1, H]
            y, h = self.gru(x.unsqueeze(1), state)
            return self.head(y.squeeze(1)), h

    return Stepper


def _static4():
    from torch import nn

    class Static4(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
            )  # fmt: skip

        def forward(self, x):
            return self.body((x - 0.5) / 0.5)  # normalization inside: the input feeds a Sub

    return Static4


def _detector():
    import torch
    from torch import nn

    class Detector(nn.Module):
        """SSD/YOLO-style single-shot head on an 8x8 grid, one anchor per cell, boxes decoded."""

        def __init__(self, classes: int = 10, grid: int = 8):
            super().__init__()

            def cbr(cin, cout, stride):
                return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

            self.backbone = nn.Sequential(*cbr(3, 16, 2), *cbr(16, 32, 2), *cbr(32, 64, 1), *cbr(64, 64, 1))
            self.box, self.cls = nn.Conv2d(64, 4, 1), nn.Conv2d(64, classes, 1)
            gy, gx = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
            self.register_buffer("cell", torch.stack([gx, gy], -1).reshape(1, grid * grid, 2).float())
            self.grid = grid

        def forward(self, images):
            f = self.backbone(images)
            n = f.shape[0]
            raw = self.box(f).permute(0, 2, 3, 1).reshape(n, -1, 4)
            xy = (self.cell + raw[..., :2].sigmoid()) / self.grid
            wh = raw[..., 2:].sigmoid()
            boxes = torch.cat([xy, wh], -1)
            scores = self.cls(f).permute(0, 2, 3, 1).reshape(n, self.grid * self.grid, -1).sigmoid()
            return boxes, scores

        def cell_index(self, boxes):  # the grid cell that holds each box centre (the positive anchor)
            c = (boxes[:, :2] * self.grid).long().clamp(0, self.grid - 1)
            return c[:, 1] * self.grid + c[:, 0]

    return Detector


# ---------------------------------------------------------------- builders


def build_crnn(d: Path) -> RealModel:
    import torch
    from torch.nn import functional as F

    x_tr, y_tr, x_te, y_te = digits()
    rng = np.random.default_rng(SEED)
    xs, ys = digit_strings(x_tr, y_tr, 2048, rng, length=2)  # short lines train faster
    with one_thread():
        model = _crnn()()
        fit(
            model,
            lambda m, x, y: F.cross_entropy(m(x).reshape(-1, BLANK + 1), y.reshape(-1)),
            [torch.from_numpy(xs), torch.from_numpy(ys)],
            epochs=3,
            lr=5e-3,
        )
    xe, ye = digit_strings(x_te, y_te, 96, rng)
    with torch.no_grad():
        acc = float((model(torch.from_numpy(xe)).argmax(-1).numpy() == ye).mean())
    path = export(
        model,
        (torch.from_numpy(xe[:1]),),
        d / "crnn.onnx",
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "N", 3: "W"}, "logits": {0: "N", 1: "T"}},
        opset_version=13,
    )
    # rows of the model's batch (the input's own rank): one line per row
    np.savez(d / "crnn_calib.npz", x=digit_strings(x_tr, y_tr, 64, rng)[0])
    np.savez(d / "crnn_eval.npz", x=xe[:32])
    wide = digit_strings(x_te, y_te, 3, rng, length=6)[0]  # another batch and width: [3,3,32,192]
    return RealModel(
        "crnn",
        path,
        model,
        ["x"],
        d / "crnn_calib.npz",
        d / "crnn_eval.npz",
        # batch stays dynamic; width flexible where the target can (Core ML), else the data's 128
        input_shapes={"x": [None, 3, 32, (32, 640)]},
        probe_feeds=[{"x": wide}, {"x": xe[:2, :, :, :72]}],
        metrics={"timestep_acc": acc},
    )


def build_encoder(d: Path) -> RealModel:
    import torch
    from torch.nn import functional as F

    x_tr, y_tr, x_te, y_te = digits()
    rng = np.random.default_rng(SEED)
    ids_tr, mask_tr = token_sequences(x_tr, rng)
    ids_te, mask_te = token_sequences(x_te, rng)
    with one_thread():
        model = _encoder()()
        fit(
            model,
            lambda m, i, a, y: F.cross_entropy(m(i, a), y),
            [torch.from_numpy(ids_tr), torch.from_numpy(mask_tr), torch.from_numpy(y_tr)],
            epochs=12,
            lr=4e-3,
        )
    with torch.no_grad():
        acc = float(
            (model(torch.from_numpy(ids_te), torch.from_numpy(mask_te)).argmax(1).numpy() == y_te).mean()
        )
    names = ["input_ids", "attention_mask"]
    path = export(
        model,
        (torch.from_numpy(ids_te[:1]), torch.from_numpy(mask_te[:1])),
        d / "encoder.onnx",
        input_names=names,
        output_names=["logits"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "seq"},
            "logits": {0: "batch"},
        },
        opset_version=17,  # LayerNormalization is a single op; GELU stays Erf-based (opset 20 has Gelu)
    )
    pick = rng.choice(len(ids_tr), 128, replace=False)
    np.savez(d / "encoder_calib.npz", input_ids=ids_tr[pick], attention_mask=mask_tr[pick])
    np.savez(d / "encoder_eval.npz", input_ids=ids_te[:128], attention_mask=mask_te[:128], labels=y_te[:128])
    short_ids, short_mask = ids_te[:3, :40], mask_te[:3, :40].copy()
    short_mask[:, 33:] = 0  # a shorter padded batch
    return RealModel(
        "encoder",
        path,
        model,
        names,
        d / "encoder_calib.npz",
        d / "encoder_eval.npz",
        probe_feeds=[{"input_ids": short_ids * short_mask, "attention_mask": short_mask}],
        metrics={"top1": acc},
    )


def build_stepper(d: Path) -> RealModel:
    import torch
    from torch.nn import functional as F

    x_tr, y_tr, x_te, y_te = digits()
    H = STEPPER_HIDDEN
    with one_thread():
        model = _stepper()()
        seq = torch.from_numpy(x_tr).permute(1, 0, 2)  # image rows are timesteps: [8, B, 8]

        def loss(m, idx):
            logits, _ = m.batched(seq[:, idx], torch.zeros(2, len(idx), H))
            return F.cross_entropy(logits[-1], torch.from_numpy(y_tr)[idx])

        fit(model, loss, [torch.arange(len(x_tr))], epochs=15, lr=1e-2)
    with torch.no_grad():
        logits, _ = model.batched(torch.from_numpy(x_te).permute(1, 0, 2), torch.zeros(2, len(x_te), H))
        acc = float((logits[-1].argmax(1).numpy() == y_te).mean())

    def chunks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The second half of each image as one chunk, with the real state after the first half."""
        with torch.no_grad():
            _, h = model.batched(torch.from_numpy(x[:, :4]).permute(1, 0, 2), torch.zeros(2, len(x), H))
        return x[:, 4:], h.permute(1, 0, 2).unsqueeze(2).numpy().copy()  # [S,4,8], [S,2,1,H]

    # torch.jit.script keeps the source's argument names; the exporter then writes `x.1`, `state.1`
    with warnings.catch_warnings():  # torch.jit.script's deprecation notice; users still do this
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(model)
    xs, ss = chunks(x_te[:1])
    path = export(
        scripted,
        (torch.from_numpy(xs[0]), torch.from_numpy(ss[0])),
        d / "stepper.onnx",
        output_names=["y", "new_state"],
        dynamic_axes={"x.1": {0: "T"}, "y": {0: "T"}},
        opset_version=14,
    )
    names = onnx_input_names(path)
    cx, cs = chunks(x_tr[np.random.default_rng(SEED).choice(len(x_tr), 128, replace=False)])
    ex, es = chunks(x_te[:48])
    # a stack of whole inputs (one more axis than the input): the model has no batch axis
    np.savez(d / "stepper_calib.npz", **dict(zip(names, [cx, cs], strict=True)))
    np.savez(d / "stepper_eval.npz", **dict(zip(names, [ex, es], strict=True)))
    long_x = np.concatenate([x_te[5], x_te[6]])  # 16 steps from a zero state
    return RealModel(
        "stepper",
        path,
        model,
        names,
        d / "stepper_calib.npz",
        d / "stepper_eval.npz",
        probe_feeds=[dict(zip(names, [long_x, np.zeros((2, 1, H), np.float32)], strict=True))],
        metrics={"top1": acc},
    )


def build_static4(d: Path) -> RealModel:
    import torch
    from torch.nn import functional as F

    x_tr, y_tr, x_te, y_te = digits()
    x_tr, x_te = upscale(x_tr, 2)[:, None], upscale(x_te, 2)[:, None]
    with one_thread():
        model = _static4()()
        fit(
            model,
            lambda m, x, y: F.cross_entropy(m(x), y),
            [torch.from_numpy(x_tr), torch.from_numpy(y_tr)],
            6,
        )
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean())
    path = export(model, (torch.from_numpy(x_te[:4]),), d / "static4.onnx", opset_version=17)  # no names
    (name,) = onnx_input_names(path)
    rng = np.random.default_rng(SEED)
    n_eval = len(x_te) // 4 * 4
    # rows of the model's batch: 4 rows make one sample of the static batch
    np.savez(d / "static4_calib.npz", **{name: x_tr[rng.choice(len(x_tr), 256, replace=False)]})
    np.savez(d / "static4_eval.npz", **{name: x_te[:n_eval]}, labels=y_te[:n_eval])
    return RealModel(
        "static4", path, model, [name], d / "static4_calib.npz", d / "static4_eval.npz", metrics={"top1": acc}
    )


def build_detector(d: Path) -> RealModel:
    import torch
    from torch.nn import functional as F

    x_tr, y_tr, x_te, y_te = digits()
    rng = np.random.default_rng(SEED)
    s_tr, b_tr, c_tr = detection_scenes(x_tr, y_tr, rng)
    s_te, b_te, c_te = detection_scenes(x_te, y_te, rng)
    with one_thread():
        model = _detector()()

        def loss(m, x, b, c):
            boxes, scores = m(x)
            pos = m.cell_index(b)
            target = torch.zeros_like(scores)
            target[torch.arange(len(x)), pos, c] = 1.0
            picked = boxes[torch.arange(len(x)), pos]
            return F.binary_cross_entropy(scores, target) * 10 + F.l1_loss(picked, b)

        fit(model, loss, [torch.from_numpy(s_tr), torch.from_numpy(b_tr), torch.from_numpy(c_tr)], epochs=12)
    with torch.no_grad():
        boxes, scores = model(torch.from_numpy(s_te))
        best = scores.amax(-1).argmax(1)
        cls = scores[torch.arange(len(s_te)), best].argmax(-1).numpy()
        centre_err = (boxes[torch.arange(len(s_te)), best, :2].numpy() - b_te[:, :2]) * 32
    path = export(
        model,
        (torch.from_numpy(s_te[:1]),),
        d / "detector.onnx",
        input_names=["images"],
        output_names=["boxes", "scores"],
        dynamic_axes={"images": {0: "batch"}, "boxes": {0: "batch"}, "scores": {0: "batch"}},
    )
    np.savez(d / "detector_calib.npz", images=s_tr[rng.choice(len(s_tr), 128, replace=False)])
    np.savez(d / "detector_eval.npz", images=s_te[:64])
    return RealModel(
        "detector",
        path,
        model,
        ["images"],
        d / "detector_calib.npz",
        d / "detector_eval.npz",
        probe_feeds=[{"images": s_te[64:69]}],
        metrics={"top1": float((cls == c_te).mean()), "centre_err_px": float(np.abs(centre_err).mean())},
    )


BUILDERS: dict[str, Callable[[Path], RealModel]] = {
    "crnn": build_crnn,
    "encoder": build_encoder,
    "stepper": build_stepper,
    "static4": build_static4,
    "detector": build_detector,
}


def build(name: str, d: Path) -> RealModel:
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rm = BUILDERS[name](d)
    rm.metrics["build_seconds"] = round(time.perf_counter() - t0, 1)
    return rm


def torch_outputs(rm: RealModel, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The source framework's answer for one ONNX feed (one whole input per name)."""
    import torch

    with torch.no_grad():
        out = rm.module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in rm.input_names))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def feeds_of(rm: RealModel, path: Path) -> list[dict[str, np.ndarray]]:
    """Whole-input feeds from one of our .npz files, the way converters/data.py reads them."""
    import onnx

    m = onnx.load(str(rm.onnx))
    lead = {
        i.name: i.type.tensor_type.shape.dim[0].dim_value for i in m.graph.input if i.name in rm.input_names
    }
    npz = np.load(path)
    ranks = {i.name: len(i.type.tensor_type.shape.dim) for i in m.graph.input if i.name in rm.input_names}
    stacks = {}
    for n in rm.input_names:
        a = npz[n]
        per = lead[n] or 1  # dim_value 0 means dynamic: one row per sample
        stacks[n] = a if a.ndim == ranks[n] + 1 else a.reshape(len(a) // per, per, *a.shape[1:])
    count = len(stacks[rm.input_names[0]])
    return [{n: s[i] for n, s in stacks.items()} for i in range(count)]
