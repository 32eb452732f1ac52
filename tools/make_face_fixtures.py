#!/usr/bin/env python3
"""Generate the face-analysis reference fixtures for Arc2Face Studio (RECIPE.md "Face analysis").

    /work/pyref/bin/python tools/make_face_fixtures.py --out tests/fixtures/faces [--seed N]

Writes into DIR:

  models/antelopev2/scrfd_10g_bnkps.onnx  tiny detector with the exact I/O signature of
      insightface antelopev2's SCRFD-10G: input `input.1` [1, 3, '?', '?'] (NCHW RGB,
      (x - 127.5) / 128); nine 2-D outputs without batch axis, in insightface's order
      (scores s8, s16, s32; box distances s8, s16, s32; keypoint distances s8, s16, s32),
      two anchors per cell, scores after a sigmoid, distances in units of the stride. Like the
      real file the declared output shapes are the fixed 640x640 ones (12800x1, ...): at other
      sizes the actual shapes differ and ONNX Runtime warns (harmless).
  models/arcface.onnx   tiny recognizer, input `input.1` [N, 3, 112, 112], output [N, 512] raw.
  arcface_d24.onnx      the same kind of recognizer with a 24-d output (for the end-to-end test
                        with the tiny generation fixture, whose encoder takes <= 32 values).
  photos/               public-domain skimage images (astronaut, chelsea) arranged as test cases.
  reference/<photo>.json  what insightface's own code computes with these models:
      [{"bbox": [x1,y1,x2,y2], "score": s, "kps": [[x,y] x 5], "embedding": [512 raw],
        "embedding_d24": [24 raw]}, ...] in detection order (score descending after NMS),
      coordinates in the pixels of the upright photo (cv2.imread, EXIF applied).
  reference/tight_crop_det320.json       tight_crop.jpg at det size 320.
  reference/aligned_astronaut_0.npy      112x112x3 uint8 BGR norm_crop of astronaut face 0.
  reference/align_matrix_astronaut_0.npy 2x3 float64 matrix from face_align.estimate_norm.
  reference/params.json  versions, per-case details (det size, det_scale, letterbox size,
                         counts), the recognizers' input_mean/input_std, notes.

The detector is not a face detector. Per stride it average-pools the colour and the local standard
deviation (texture) of each cell, smooths them over 3x3 cells, and scores a cell by a small random
conv plus a hand-made "face-ish cell" term (a Gaussian bump around skin-like R-G, G-B, brightness
and texture, FACE_STATS); the score biases are then shifted so the astronaut's best score at 640
is 0.93. Flat regions (the letterbox padding, no_face.png) score ~0. Because the texture of a cell
shrinks when a small photo is upscaled, the tight crop scores lower at det size 640 than at 320,
as real detectors do. Boxes are 1.6-4 strides per side (anchor 1 twice as large); keypoints sit
at a template position inside the box plus a small learned offset.

Deterministic for a given --seed and package versions. --seed changes every random weight
(tools/check_faces.py --fresh-seed N uses it for models the tests never saw).
"""

import argparse
import json
import math
import os
import shutil
import sys

import numpy as np

DET_SIZE = 640
TIGHT_ALT_DET_SIZE = 320
NMS_THRESH = 0.4
DET_THRESH = 0.5
TOP_SCORE = 0.93          # calibrated best detector score on astronaut.jpg at 640
SCORE_GAIN = 8.0          # logit gain of the random part of the score head
FACE_GAIN = 8.0           # logit gain of the hand-made "face-ish cell" term
# "Face-ish" cell statistics in normalised units ((x - 127.5) / 128), smoothed over 3x3 cells:
# centre and width for R-G, G-B, brightness and local standard deviation (texture).
FACE_STATS = ((0.28, 0.15), (0.22, 0.15), (0.20, 0.60), (0.35, 0.15))
JPEG_QUALITY = 90

# Output names of the real antelopev2 scrfd_10g_bnkps.onnx, in its order.
SCRFD_OUTPUT_NAMES = ["448", "471", "494", "451", "474", "497", "454", "477", "500"]
STRIDES = (8, 16, 32)
# Keypoint template inside a box (fractions of width/height): eyes, nose, mouth corners.
KPS_TX = (0.30, 0.70, 0.50, 0.35, 0.65)
KPS_TY = (0.40, 0.40, 0.58, 0.76, 0.76)

PHOTOS = ["astronaut.jpg", "two_faces.jpg", "large.jpg", "rotated.jpg", "no_face.png", "tight_crop.jpg"]


# --------------------------------------------------------------------------------------------
# photos


def _save_jpeg(path, rgb, exif=None, quality=JPEG_QUALITY):
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(rgb))
    kw = dict(quality=quality, subsampling=0, optimize=True)  # 4:4:4: least decoder-dependent
    if exif is not None:
        kw["exif"] = exif
    im.save(path, "JPEG", **kw)


def _resize(rgb, w, h):
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.LANCZOS))


def make_photos(photo_dir):
    """Write the test photos; returns {name: description}."""
    import skimage.data
    from PIL import Image

    os.makedirs(photo_dir, exist_ok=True)
    astro = skimage.data.astronaut()  # 512x512 RGB, public domain (NASA)
    chelsea = skimage.data.chelsea()  # 451x300 RGB, CC0 (Stefan van der Walt)
    desc = {}

    _save_jpeg(os.path.join(photo_dir, "astronaut.jpg"), astro)
    desc["astronaut.jpg"] = "skimage.data.astronaut(), 512x512"

    # Two portraits side by side on a light background, 704x400.
    canvas = np.full((400, 704, 3), 200, np.uint8)
    head = _resize(astro[0:250, 120:340], 286, 325)  # astronaut head and shoulders
    canvas[40:365, 24:310] = head
    cat = _resize(chelsea[20:280, 120:380][:, ::-1], 330, 330)  # flipped cat face
    canvas[35:365, 350:680] = cat
    _save_jpeg(os.path.join(photo_dir, "two_faces.jpg"), canvas)
    desc["two_faces.jpg"] = "astronaut head crop (left) + flipped chelsea crop (right), 704x400"

    # Larger than 640 and not square: 1500x1000 with the astronaut upscaled, 4:2:0 chroma.
    big = np.zeros((1000, 1500, 3), np.uint8)
    big[:] = np.linspace(60, 180, 1500).astype(np.uint8)[None, :, None]
    big[:, 250:1250] = _resize(astro, 1000, 1000)
    _save_jpeg(os.path.join(photo_dir, "large.jpg"), big)
    desc["large.jpg"] = "astronaut upscaled to 1000x1000 in a 1500x1000 gradient canvas"

    # EXIF orientation 6: the upright view (400 wide x 512 tall) is stored rotated 90 degrees
    # counter-clockwise (512 wide x 400 tall); a viewer rotates it 90 degrees clockwise.
    upright = astro[:, 40:440]
    stored = np.rot90(upright, 1)  # counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    _save_jpeg(os.path.join(photo_dir, "rotated.jpg"), stored, exif=exif.tobytes())
    desc["rotated.jpg"] = ("astronaut[:, 40:440] (upright 400x512) stored rotated 90 deg CCW (512x400) "
                           "with EXIF Orientation=6")

    # Smooth gradient, nothing to find.
    yy, xx = np.mgrid[0:150, 0:200].astype(np.float32)
    grad = np.stack([90 + 0.5 * xx, 120 + 0.3 * yy, 160 - 0.2 * xx - 0.2 * yy], -1)
    Image.fromarray(np.clip(grad, 0, 255).round().astype(np.uint8)).save(os.path.join(photo_dir, "no_face.png"))
    desc["no_face.png"] = "200x150 smooth colour gradient"

    tight = astro[60:190, 170:280]
    _save_jpeg(os.path.join(photo_dir, "tight_crop.jpg"), tight)
    desc["tight_crop.jpg"] = "astronaut[60:190, 170:280], 110x130 tight face crop"
    return desc


# --------------------------------------------------------------------------------------------
# models


def _torch():
    import torch

    return torch


def build_detector(seed):
    torch = _torch()
    from torch import nn
    import torch.nn.functional as F

    class Level(nn.Module):
        def __init__(self, stride):
            super().__init__()
            self.stride = stride
            self.conv1 = nn.Conv2d(8, 16, 3, padding=1)
            self.score = nn.Conv2d(16, 2, 1)
            self.bbox = nn.Conv2d(16, 8, 1)
            self.kps = nn.Conv2d(16, 20, 1)
            self.register_buffer("face_gain", torch.tensor(FACE_GAIN))
            self.register_buffer("face_c", torch.tensor([c for c, _ in FACE_STATS]).view(1, 4, 1, 1))
            self.register_buffer("face_w", torch.tensor([w for _, w in FACE_STATS]).view(1, 4, 1, 1))
            self.register_buffer("kps_tx", torch.tensor(KPS_TX).view(1, 1, 1, 5))
            self.register_buffer("kps_ty", torch.tensor(KPS_TY).view(1, 1, 1, 5))
            self.register_buffer("anchor_scale", torch.tensor([1.0, 2.0]).view(1, 1, 1, 2, 1))

        def raw_score(self, x):
            s = self.stride
            m = F.avg_pool2d(x, s, s)
            m2 = F.avg_pool2d(x * x, s, s)
            tex = torch.sqrt(F.relu(m2 - m * m).mean(1, keepdim=True) + 1e-3)
            f = torch.cat([m, tex], 1)
            fs = F.avg_pool2d(f, 3, 1, 1, count_include_pad=False)
            h = F.relu(self.conv1(torch.cat([f, fs], 1)))
            stats = torch.cat([fs[:, 0:1] - fs[:, 1:2], fs[:, 1:2] - fs[:, 2:3],
                               fs[:, 0:3].mean(1, keepdim=True), fs[:, 3:4]], 1)
            face = -(((stats - self.face_c) / self.face_w) ** 2).sum(1, keepdim=True)
            logit = self.score(h) + self.face_gain * face
            return logit, h

        def forward(self, x):
            logit, h = self.raw_score(x)
            score = torch.sigmoid(logit).permute(0, 2, 3, 1).reshape(-1, 1)
            # box distances (l, t, r, b) per anchor, in strides: 1.6 .. ~4, anchor 1 larger
            d = (1.6 + 0.8 * F.softplus(self.bbox(h))).permute(0, 2, 3, 1)  # 1,h,w,8
            d = d.reshape(d.shape[0], d.shape[1], d.shape[2], 2, 4) * self.anchor_scale
            box = d.reshape(-1, 4)
            bw = d[..., 0:1] + d[..., 2:3]  # 1,h,w,2,1
            bh = d[..., 1:2] + d[..., 3:4]
            k = 0.12 * torch.tanh(self.kps(h)).permute(0, 2, 3, 1)  # 1,h,w,20
            k = k.reshape(k.shape[0], k.shape[1], k.shape[2], 2, 5, 2)
            kx = -d[..., 0:1] + bw * (self.kps_tx.view(1, 1, 1, 1, 5) + k[..., 0])
            ky = -d[..., 1:2] + bh * (self.kps_ty.view(1, 1, 1, 1, 5) + k[..., 1])
            kps = torch.stack([kx, ky], -1).reshape(-1, 10)
            return score, box, kps

    class TinySCRFD(nn.Module):
        def __init__(self):
            super().__init__()
            self.levels = nn.ModuleList([Level(s) for s in STRIDES])

        def forward(self, x):
            outs = [lv(x) for lv in self.levels]
            return tuple(o[0] for o in outs) + tuple(o[1] for o in outs) + tuple(o[2] for o in outs)

    torch.manual_seed(seed)
    net = TinySCRFD().eval()
    with torch.no_grad():
        for lv in net.levels:
            lv.score.weight.mul_(SCORE_GAIN)
            lv.score.bias.mul_(SCORE_GAIN)
    return net


def letterbox(img, size):
    """insightface SCRFD._detect_candidates: returns (det_img, det_scale, new_w, new_h)."""
    import cv2

    im_ratio = float(img.shape[0]) / img.shape[1]
    model_ratio = float(size) / size
    if im_ratio > model_ratio:
        new_height = size
        new_width = int(new_height / im_ratio)
    else:
        new_width = size
        new_height = int(new_width * im_ratio)
    det_scale = float(new_height) / img.shape[0]
    resized = cv2.resize(img, (new_width, new_height))
    det_img = np.zeros((size, size, 3), dtype=np.uint8)
    det_img[:new_height, :new_width, :] = resized
    return det_img, det_scale, new_width, new_height


def calibrate_detector(net, bgr_img):
    """Shift the score biases so the best score on bgr_img at DET_SIZE is TOP_SCORE."""
    torch = _torch()
    det_img, _, _, _ = letterbox(bgr_img, DET_SIZE)
    x = torch.from_numpy((det_img[:, :, ::-1].astype(np.float32) - 127.5) / 128.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        best = max(float(lv.raw_score(x.contiguous())[0].max()) for lv in net.levels)
        shift = math.log(TOP_SCORE / (1 - TOP_SCORE)) - best
        for lv in net.levels:
            lv.score.bias.add_(shift)
    return shift


def build_recognizer(seed, dim):
    torch = _torch()
    from torch import nn

    class TinyArcFace(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 5, stride=2, padding=2)     # 56x56
            self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)    # 28x28
            self.pool = nn.AvgPool2d(4)                                # 7x7
            self.proj = nn.Conv2d(32, dim, 1)
            self.spatial = nn.Conv2d(dim, dim, 7, groups=dim)          # position-dependent weights
            self.flat = nn.Flatten(1)

        def forward(self, x):
            h = torch.relu(self.conv1(x))
            h = torch.relu(self.conv2(h))
            h = self.proj(self.pool(h))
            return self.flat(self.spatial(h))

    torch.manual_seed(seed)
    net = TinyArcFace().eval()
    with torch.no_grad():
        # zero-mean spatial weights: the embedding follows the layout of the crop, not its mean
        w = net.spatial.weight
        w.sub_(w.mean(dim=(2, 3), keepdim=True)).mul_(3.0)
        net.spatial.bias.zero_()
    return net


def _set_dims(value_info, dims):
    shape = value_info.type.tensor_type.shape
    for d, v in zip(shape.dim, dims):
        if isinstance(v, str):
            d.ClearField("dim_value")
            d.dim_param = v
        else:
            d.ClearField("dim_param")
            d.dim_value = v


def _rename_outputs(m, names):
    """Rename the graph outputs (torchscript refuses numeric names such as '448')."""
    old = [o.name for o in m.graph.output]
    ren = dict(zip(old, names))
    for node in m.graph.node:
        for i, n in enumerate(node.output):
            if n in ren:
                node.output[i] = ren[n]
        for i, n in enumerate(node.input):
            if n in ren:
                node.input[i] = ren[n]
    for o in m.graph.output:
        o.name = ren[o.name]


def export_detector(net, path):
    torch = _torch()
    import onnx

    os.makedirs(os.path.dirname(path), exist_ok=True)
    x = torch.zeros(1, 3, DET_SIZE, DET_SIZE)
    tmp = path + ".tmp"
    torch.onnx.export(net, (x,), tmp, dynamo=False, opset_version=17, input_names=["input.1"],
                      output_names=[f"out{i}" for i in range(9)], dynamic_axes={"input.1": {2: "?", 3: "?"}},
                      do_constant_folding=True)
    m = onnx.load(tmp)
    os.remove(tmp)
    _rename_outputs(m, SCRFD_OUTPUT_NAMES)
    _set_dims(m.graph.input[0], [1, 3, "?", "?"])
    # Declared output shapes as in the real file: fixed to the 640x640 values, 2-D.
    widths = (1, 4, 10)
    for i, out in enumerate(m.graph.output):
        s = STRIDES[i % 3]
        n = (DET_SIZE // s) * (DET_SIZE // s) * 2
        _set_dims(out, [n, widths[i // 3]])
    m.producer_name = "arc2face-studio tools/make_face_fixtures.py"
    onnx.checker.check_model(m)
    onnx.save(m, path)


def export_recognizer(net, path):
    torch = _torch()
    import onnx

    os.makedirs(os.path.dirname(path), exist_ok=True)
    x = torch.zeros(1, 3, 112, 112)
    tmp = path + ".tmp"
    torch.onnx.export(net, (x,), tmp, dynamo=False, opset_version=17, input_names=["input.1"],
                      output_names=["embedding"], dynamic_axes={"input.1": {0: "None"}, "embedding": {0: "None"}},
                      do_constant_folding=True)
    m = onnx.load(tmp)
    os.remove(tmp)
    _rename_outputs(m, ["683"])
    m.producer_name = "arc2face-studio tools/make_face_fixtures.py"
    onnx.checker.check_model(m)
    onnx.save(m, path)


# --------------------------------------------------------------------------------------------
# insightface reference


def _session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # the real SCRFD also warns about its declared output shapes
    so.intra_op_num_threads = 2
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def make_detector(path, det_size=DET_SIZE):
    from insightface.model_zoo import SCRFD

    det = SCRFD(model_file=path, session=_session(path))
    det.prepare(ctx_id=-1, input_size=(det_size, det_size), det_thresh=DET_THRESH, nms_thresh=NMS_THRESH)
    assert det.input_sizes == [(det_size, det_size)], det.input_sizes
    assert det.use_kps and det.fmc == 3 and det._num_anchors == 2 and not det.batched
    return det


def make_recognizer(path):
    from insightface.model_zoo import ArcFaceONNX

    rec = ArcFaceONNX(model_file=path, session=_session(path))
    rec.prepare(ctx_id=-1)
    return rec


def run_insightface(img, det, recs):
    """FaceAnalysis.get without the model-pack plumbing: detect, then each recognizer's get()."""
    from insightface.app.common import Face

    bboxes, kpss = det.detect(img)
    faces = []
    for i in range(bboxes.shape[0]):
        face = Face(bbox=bboxes[i, 0:4], kps=kpss[i], det_score=bboxes[i, 4])
        entry = {
            "bbox": [float(v) for v in face.bbox],
            "score": float(face.det_score),
            "kps": [[float(a), float(b)] for a, b in face.kps],
        }
        for key, rec in recs.items():
            emb = rec.get(img, face)
            entry[key] = [float(v) for v in np.asarray(emb, dtype=np.float32).ravel()]
        faces.append(entry)
    return faces


def write_json(path, obj):
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=1)
        fh.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="fixture root (e.g. tests/fixtures/faces)")
    ap.add_argument("--seed", type=int, default=0, help="torch seed for every model weight")
    args = ap.parse_args()

    import warnings

    # torch's legacy-exporter notice and skimage 0.26's SimilarityTransform.estimate deprecation
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)

    import cv2
    import insightface
    import onnx
    import onnxruntime
    import PIL
    import skimage
    import torch

    torch.set_num_threads(2)
    out = os.path.abspath(args.out)
    for sub in ("models", "photos", "reference"):
        if os.path.isdir(os.path.join(out, sub)):
            shutil.rmtree(os.path.join(out, sub))
    os.makedirs(os.path.join(out, "reference"), exist_ok=True)

    photo_dir = os.path.join(out, "photos")
    desc = make_photos(photo_dir)

    # EXIF: cv2.imread (IMREAD_COLOR) must apply the orientation, as the Rust side does.
    rot = cv2.imread(os.path.join(photo_dir, "rotated.jpg"))
    rot_raw = cv2.imread(os.path.join(photo_dir, "rotated.jpg"), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    import skimage.data

    upright_ref = skimage.data.astronaut()[:, 40:440, ::-1].astype(np.int32)
    exif_applied = rot.shape == (512, 400, 3) and rot_raw.shape == (400, 512, 3) and \
        float(np.abs(rot.astype(np.int32) - upright_ref).mean()) < 3.0
    if not exif_applied:
        sys.exit("cv2.imread did not apply the EXIF orientation of rotated.jpg")

    # Models.
    det_path = os.path.join(out, "models", "antelopev2", "scrfd_10g_bnkps.onnx")
    net = build_detector(args.seed)
    shift = calibrate_detector(net, cv2.imread(os.path.join(photo_dir, "astronaut.jpg")))
    export_detector(net, det_path)
    rec_paths = {
        "embedding": os.path.join(out, "models", "arcface.onnx"),
        "embedding_d24": os.path.join(out, "arcface_d24.onnx"),
    }
    export_recognizer(build_recognizer(args.seed + 1000, 512), rec_paths["embedding"])
    export_recognizer(build_recognizer(args.seed + 2000, 24), rec_paths["embedding_d24"])

    det = make_detector(det_path)
    recs = {k: make_recognizer(p) for k, p in rec_paths.items()}

    cases = []
    summary = {}
    for name in PHOTOS:
        stem = os.path.splitext(name)[0]
        img = cv2.imread(os.path.join(photo_dir, name))
        faces = run_insightface(img, det, recs)
        _, det_scale, nw, nh = letterbox(img, DET_SIZE)
        write_json(os.path.join(out, "reference", stem + ".json"), faces)
        case = dict(photo=name, det_size=None, reference=stem + ".json")
        if name == "tight_crop.jpg":
            # a CLI that retries at a smaller detector size when nothing is found (RECIPE.md "Face analysis")
            case["alt_references"] = ["tight_crop_det320.json"]
        cases.append(dict(case, default_det_size=DET_SIZE,
                          image_wh=[img.shape[1], img.shape[0]], letterbox_wh=[nw, nh], det_scale=det_scale,
                          count=len(faces), scores=[round(f["score"], 4) for f in faces]))
        summary[name] = [round(f["score"], 3) for f in faces]

    # Tight crop at the smaller detector size.
    det320 = make_detector(det_path, TIGHT_ALT_DET_SIZE)
    img = cv2.imread(os.path.join(photo_dir, "tight_crop.jpg"))
    faces = run_insightface(img, det320, recs)
    _, det_scale, nw, nh = letterbox(img, TIGHT_ALT_DET_SIZE)
    write_json(os.path.join(out, "reference", "tight_crop_det320.json"), faces)
    cases.append(dict(photo="tight_crop.jpg", det_size=TIGHT_ALT_DET_SIZE, reference="tight_crop_det320.json",
                      image_wh=[img.shape[1], img.shape[0]], letterbox_wh=[nw, nh], det_scale=det_scale,
                      count=len(faces), scores=[round(f["score"], 4) for f in faces]))
    summary["tight_crop.jpg@320"] = [round(f["score"], 3) for f in faces]
    # no_face at 320 as well: a Rust retry at a smaller size must still find nothing.
    img = cv2.imread(os.path.join(photo_dir, "no_face.png"))
    nf320 = run_insightface(img, det320, recs)
    write_json(os.path.join(out, "reference", "no_face_det320.json"), nf320)
    cases.append(dict(photo="no_face.png", det_size=TIGHT_ALT_DET_SIZE, reference="no_face_det320.json",
                      count=len(nf320), scores=[round(f["score"], 4) for f in nf320]))

    # Alignment alone: first face of astronaut.
    from insightface.utils import face_align

    img = cv2.imread(os.path.join(photo_dir, "astronaut.jpg"))
    with open(os.path.join(out, "reference", "astronaut.json")) as fh:
        astro_faces = json.load(fh)
    if astro_faces:
        kps = np.array(astro_faces[0]["kps"], dtype=np.float32)
        M = face_align.estimate_norm(kps, 112)
        crop = face_align.norm_crop(img, kps, 112)
        np.save(os.path.join(out, "reference", "align_matrix_astronaut_0.npy"), np.asarray(M, dtype=np.float64))
        np.save(os.path.join(out, "reference", "aligned_astronaut_0.npy"), np.ascontiguousarray(crop, dtype=np.uint8))

    params = dict(
        seed=args.seed,
        versions=dict(insightface=insightface.__version__, onnxruntime=onnxruntime.__version__,
                      opencv=cv2.__version__, numpy=np.__version__, onnx=onnx.__version__, torch=torch.__version__,
                      scikit_image=skimage.__version__, pillow=PIL.__version__),
        det_size=DET_SIZE,
        det_thresh=DET_THRESH,
        nms_thresh=NMS_THRESH,
        detector=dict(file="models/antelopev2/scrfd_10g_bnkps.onnx", input_mean=float(det.input_mean),
                      input_std=float(det.input_std), score_bias_shift=shift, top_score=TOP_SCORE),
        recognizers={
            "embedding": dict(file="models/arcface.onnx", input_mean=float(recs["embedding"].input_mean),
                              input_std=float(recs["embedding"].input_std), dim=512),
            "embedding_d24": dict(file="arcface_d24.onnx", input_mean=float(recs["embedding_d24"].input_mean),
                                  input_std=float(recs["embedding_d24"].input_std), dim=24),
        },
        cv2_imread_applies_exif=bool(exif_applied),
        photos=desc,
        cases=cases,
        notes=[
            "Reference = insightface.model_zoo.SCRFD(model_file, session=CPU InferenceSession) with "
            "prepare(ctx_id=-1, input_size=(640, 640), det_thresh=0.5, nms_thresh=0.4), then "
            "ArcFaceONNX(model_file, session).get(img, face) per face; img = cv2.imread(path) (BGR, EXIF applied).",
            "Letterbox (SCRFD._detect_candidates): im_ratio = h / w; if im_ratio > 1: new_h = size, "
            "new_w = int(new_h / im_ratio) else new_w = size, new_h = int(new_w * im_ratio) (int() truncates); "
            "det_scale = new_h / h (height-based in both branches); cv2.resize(img, (new_w, new_h)) default "
            "INTER_LINEAR; image at the top-left of a zero canvas.",
            "Blob: cv2.dnn.blobFromImage(img, 1/128, (size, size), (127.5,)*3, swapRB=True) = (RGB - 127.5) / 128.",
            "Candidates: scores >= 0.5 per stride, boxes and kps divided by det_scale, concatenated in stride order, "
            "then a STABLE argsort on -score (insightface 2.x; 0.7.x used a non-stable argsort()[::-1]); "
            "greedy NMS at IoU > 0.4 is suppressed, areas (x2-x1+1)*(y2-y1+1). Values are float32.",
            "Alignment: face_align.norm_crop = cv2.warpAffine(img, M, (112, 112), borderValue=0) "
            "(INTER_LINEAR, BORDER_CONSTANT), M = skimage SimilarityTransform estimated kps -> arcface_dst.",
            "Recognizer blob: cv2.dnn.blobFromImages(crop, 1/input_std, (112, 112), (input_mean,)*3, swapRB=True).",
            "The detector's declared output shapes are the fixed 640x640 ones (like the real file); ORT warns at "
            "other input sizes. insightface 2.x itself builds one Session per input size with a rewritten, "
            "fully static copy of the graph (SCRFD static_shape_sessions=True), so it never sees the mismatch.",
            "insightface 2.x: SCRFD/FaceAnalysis without an explicit det size detect at BOTH (128,128) and "
            "(640,640) and merge the candidates before NMS; Arc2Face passes det_size=(640, 640), as we do.",
            "JPEGs are written 4:4:4 (subsampling=0): image 0.25 / zune-jpeg 0.5.15 and libjpeg-turbo (cv2) then "
            "differ on ~1% of pixels by <= 3 levels; with 4:2:0 chroma they differ on ~7% by <= 5, which moved "
            "this tiny detector's scores by up to 0.07.",
        ],
    )
    write_json(os.path.join(out, "reference", "params.json"), params)

    print("detections (scores):")
    for k, v in summary.items():
        print(f"  {k:<22} {len(v):>2}  {v}")
    print("recognizer input mean/std:", {k: (r.input_mean, r.input_std) for k, r in recs.items()})
    total = 0
    for root, _, files in os.walk(out):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    print(f"fixture size: {total / 1e6:.2f} MB in {out}")


if __name__ == "__main__":
    main()
