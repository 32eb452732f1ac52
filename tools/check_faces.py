#!/usr/bin/env python3
"""Face-analysis parity check: run the Rust CLI on the face fixture and compare with insightface.

    /work/pyref/bin/python tools/check_faces.py --fixture tests/fixtures/faces --bin target/release/arc2face
    /work/pyref/bin/python tools/check_faces.py --fixture tests/fixtures/faces --bin BIN --fresh-seed 7
    /work/pyref/bin/python tools/check_faces.py --fixture tests/fixtures/faces --self-test [--noise 2]

For each case in DIR/reference/params.json it runs

    BIN faces --models DIR/models DIR/photos/PHOTO [--det-size N]

which must print a JSON array on stdout: [{"bbox": [x1,y1,x2,y2], "score": s, "kps": [[x,y] x 5],
"embedding": [512 raw floats]}, ...] in detection order (score descending), coordinates in the
pixels of the upright photo (EXIF orientation applied). It compares with DIR/reference/<case>.json
(computed by tools/make_face_fixtures.py with insightface's own code):

  - every reference face with score >= 0.6 is matched (one-to-one, greedy by IoU) by a Rust face
    with IoU >= 0.9;
  - no Rust face with score >= 0.6 is left without a reference face at IoU >= 0.9;
  - for every matched pair where either score >= 0.6: |score diff| <= 0.01, every keypoint within
    1.5 px (Euclidean), embedding cosine >= 0.99 and the same embedding length;
  - the Rust list is in score-descending order.
Pairs where both scores are below 0.6 are matched and shown but not held to the tolerances.

The tight crop without --det-size may be answered either as insightface does at 640 (nothing) or as
insightface does at 320 (a retry at a smaller detector size, RECIPE.md "Face analysis"); both are accepted
and the table says which one matched.

--fresh-seed N regenerates the fixture into a temporary folder with tools/make_face_fixtures.py
--seed N (models the tests never saw) and checks against that instead of --fixture.
--self-test replaces the Rust binary by an independent Python implementation of RECIPE.md "Face analysis"
(PIL decoding, float bilinear resize and warp, numpy Umeyama, its own decode and NMS; only ONNX
Runtime is shared), run through the same subprocess/JSON path; --noise A adds uniform integer
noise in [-A, A] to its decoded pixels; --cv2-primitives makes it decode, resize and warp with
OpenCV instead (then it must agree with insightface to float rounding). It shows the tolerances
are reachable without insightface.

Exit status: 0 all good, 1 a comparison failed, 2 the CLI failed (non-zero exit, timeout, bad JSON).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

REQ_SCORE = 0.6
IOU_MIN = 0.9
SCORE_TOL = 0.01
KPS_TOL = 1.5
COS_MIN = 0.99


# --------------------------------------------------------------------------------------------
# comparison


def iou(a, b):
    """Plain IoU of two [x1, y1, x2, y2] boxes (no +1)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    ua = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


def cosine(a, b):
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if a.shape != b.shape or na == 0 or nb == 0:
        return float("nan")
    return float(a @ b / (na * nb))


def validate_faces(faces):
    """Return an error string if the CLI output does not have the expected shape, else None."""
    if not isinstance(faces, list):
        return "stdout JSON is not a list"
    for i, f in enumerate(faces):
        if not isinstance(f, dict):
            return f"entry {i} is not an object"
        for key in ("bbox", "score", "kps", "embedding"):
            if key not in f:
                return f"entry {i} lacks '{key}'"
        try:
            bb = np.asarray(f["bbox"], dtype=np.float64)
            kp = np.asarray(f["kps"], dtype=np.float64)
            float(f["score"])
            np.asarray(f["embedding"], dtype=np.float64)
        except (TypeError, ValueError) as e:
            return f"entry {i}: {e}"
        if bb.shape != (4,):
            return f"entry {i}: bbox shape {bb.shape}"
        if kp.shape != (5, 2):
            return f"entry {i}: kps shape {kp.shape}"
    return None


def compare(ref, got):
    """Compare two face lists. Returns (ok, stats dict, list of problems)."""
    problems = []
    pairs = []
    for i, r in enumerate(ref):
        for j, g in enumerate(got):
            v = iou(r["bbox"], g["bbox"])
            if v >= IOU_MIN:
                pairs.append((v, i, j))
    pairs.sort(key=lambda t: -t[0])
    ref_used, got_used, matches = {}, {}, []
    for v, i, j in pairs:
        if i in ref_used or j in got_used:
            continue
        ref_used[i] = j
        got_used[j] = i
        matches.append((i, j, v))

    n_req = sum(1 for r in ref if r["score"] >= REQ_SCORE)
    for i, r in enumerate(ref):
        if r["score"] >= REQ_SCORE and i not in ref_used:
            best = max([iou(r["bbox"], g["bbox"]) for g in got], default=0.0)
            problems.append(f"reference face {i} (score {r['score']:.3f}, bbox {fmt_box(r['bbox'])}) "
                            f"unmatched (best IoU {best:.3f})")
    for j, g in enumerate(got):
        if float(g["score"]) >= REQ_SCORE and j not in got_used:
            best = max([iou(r["bbox"], g["bbox"]) for r in ref], default=0.0)
            problems.append(f"extra Rust face {j} (score {float(g['score']):.3f}, bbox {fmt_box(g['bbox'])}) "
                            f"matches no reference face (best IoU {best:.3f})")

    worst = dict(iou=None, score=0.0, kps=0.0, cos=None)
    for i, j, v in matches:
        r, g = ref[i], got[j]
        held = max(r["score"], float(g["score"])) >= REQ_SCORE
        ds = abs(float(g["score"]) - r["score"])
        dk = float(np.linalg.norm(np.asarray(g["kps"], np.float64) - np.asarray(r["kps"], np.float64), axis=1).max())
        emb_r, emb_g = r["embedding"], g["embedding"]
        c = cosine(emb_r, emb_g) if len(emb_r) == len(emb_g) else float("nan")
        if held:
            worst["iou"] = v if worst["iou"] is None else min(worst["iou"], v)
            worst["score"] = max(worst["score"], ds)
            worst["kps"] = max(worst["kps"], dk)
            worst["cos"] = c if worst["cos"] is None or not (c >= worst["cos"]) else worst["cos"]
            tag = f"reference face {i} / Rust face {j}"
            if ds > SCORE_TOL:
                problems.append(f"{tag}: score {float(g['score']):.4f} vs {r['score']:.4f} (diff {ds:.4f})")
            if dk > KPS_TOL:
                problems.append(f"{tag}: keypoints off by up to {dk:.3f} px")
            if len(emb_r) != len(emb_g):
                problems.append(f"{tag}: embedding length {len(emb_g)} != {len(emb_r)}")
            elif not (c >= COS_MIN):
                problems.append(f"{tag}: embedding cosine {c:.5f}")
    scores = [float(g["score"]) for g in got]
    for j in range(1, len(scores)):
        if scores[j] > scores[j - 1] + 1e-3:
            problems.append(f"Rust faces not in score-descending order at index {j} ({scores[j - 1]:.3f}, {scores[j]:.3f})")
            break
    stats = dict(n_ref=len(ref), n_req=n_req, n_got=len(got), n_matched=len(matches), **worst)
    return not problems, stats, problems


def fmt_box(b):
    return "[" + ", ".join(f"{float(v):.1f}" for v in b) + "]"


# --------------------------------------------------------------------------------------------
# running the CLI


def run_cli(cmd_prefix, models, photo, det_size, timeout):
    cmd = list(cmd_prefix) + ["faces", "--models", models, photo]
    if det_size is not None:
        cmd += ["--det-size", str(det_size)]
    print("$", " ".join(cmd), flush=True)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f}s"
    except OSError as e:
        return None, f"cannot run: {e}"
    if p.returncode != 0:
        tail = "\n".join(p.stderr.splitlines()[-15:])
        return None, f"exit status {p.returncode}; stderr tail:\n{tail}"
    text = p.stdout.strip()
    try:
        faces = json.loads(text)
    except json.JSONDecodeError:
        # tolerate log lines before the array: parse from the first line starting with '['
        faces = None
        lines = text.splitlines()
        for k, line in enumerate(lines):
            if line.lstrip().startswith("["):
                try:
                    faces = json.loads("\n".join(lines[k:]))
                    break
                except json.JSONDecodeError:
                    continue
        if faces is None:
            return None, "stdout is not a JSON array: " + text[:300]
    err = validate_faces(faces)
    if err:
        return None, err
    return faces, None


def check_fixture(root, cmd_prefix, timeout):
    ref_dir = os.path.join(root, "reference")
    with open(os.path.join(ref_dir, "params.json")) as fh:
        params = json.load(fh)
    models = os.path.join(root, "models")
    rows, cli_failed, failed = [], False, False
    for case in params["cases"]:
        photo = os.path.join(root, "photos", case["photo"])
        label = case["photo"] + ("" if case.get("det_size") is None else f" @{case['det_size']}")
        refs = [case["reference"]] + list(case.get("alt_references", []))
        got, err = run_cli(cmd_prefix, models, photo, case.get("det_size"), timeout)
        if err:
            print(f"  {label}: CLI failed: {err}")
            rows.append((label, None, "CLI FAILED"))
            cli_failed = True
            continue
        results = []
        for rname in refs:
            with open(os.path.join(ref_dir, rname)) as fh:
                ref = json.load(fh)
            ok, stats, problems = compare(ref, got)
            results.append((ok, rname, stats, problems))
            if ok:
                break
        ok_results = [r for r in results if r[0]]
        ok, rname, stats, problems = ok_results[0] if ok_results else results[0]
        if not ok:
            failed = True
            for rn, res in [(r[1], r[3]) for r in results]:
                for pr in res:
                    print(f"  {label} vs {rn}: {pr}")
        note = "ok" if ok else "FAIL"
        if len(refs) > 1:
            note += f" (vs {rname})"
        rows.append((label, stats, note))

    print()
    print(f"{'case':<24} {'ref':>3} {'>=.6':>4} {'rust':>4} {'match':>5}  {'worst IoU':>9} {'d score':>8} "
          f"{'kps px':>7} {'cosine':>8}  result")
    print(f"{'':<24} {'':>3} {'':>4} {'':>4} {'':>5}  {'>=0.9':>9} {'<=0.01':>8} {'<=1.5':>7} {'>=0.99':>8}")
    for label, s, note in rows:
        if s is None:
            print(f"{label:<24} {'-':>3} {'-':>4} {'-':>4} {'-':>5}  {'-':>9} {'-':>8} {'-':>7} {'-':>8}  {note}")
            continue
        wi = "-" if s["iou"] is None else f"{s['iou']:.4f}"
        wc = "-" if s["cos"] is None else f"{s['cos']:.6f}"
        print(f"{label:<24} {s['n_ref']:>3} {s['n_req']:>4} {s['n_got']:>4} {s['n_matched']:>5}  {wi:>9} "
              f"{s['score']:>8.1e} {s['kps']:>7.1e} {wc:>8}  {note}")
    return (2 if cli_failed else 1 if failed else 0)


# --------------------------------------------------------------------------------------------
# independent Python implementation of the CLI (for --self-test)


def _emu_decode(path, noise):
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        rgb = np.asarray(im, dtype=np.uint8)
    if noise:
        rng = np.random.default_rng(12345)
        rgb = np.clip(rgb.astype(np.int32) + rng.integers(-noise, noise + 1, rgb.shape), 0, 255).astype(np.uint8)
    return rgb


def _emu_resize(img, new_w, new_h):
    """Bilinear resize with half-pixel centres in float, edge-clamped (OpenCV INTER_LINEAR geometry)."""
    h, w = img.shape[:2]

    def axis(n_out, n_in):
        scale = n_in / n_out
        f = (np.arange(n_out) + 0.5) * scale - 0.5
        i0 = np.floor(f).astype(np.int64)
        a = f - i0
        a[i0 < 0] = 0.0
        i0[i0 < 0] = 0
        last = i0 >= n_in - 1
        a[last] = 0.0
        i0[last] = n_in - 1
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, a

    y0, y1, ay = axis(new_h, h)
    x0, x1, ax = axis(new_w, w)
    f = img.astype(np.float64)
    top = f[y0][:, x0] * (1 - ax)[None, :, None] + f[y0][:, x1] * ax[None, :, None]
    bot = f[y1][:, x0] * (1 - ax)[None, :, None] + f[y1][:, x1] * ax[None, :, None]
    out = top * (1 - ay)[:, None, None] + bot * ay[:, None, None]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def _emu_umeyama(src, dst):
    """Similarity transform src -> dst (Umeyama 1991, with scale, no reflection); 2x3 float64."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    n = src.shape[0]
    ms, md = src.mean(0), dst.mean(0)
    sc, dc = src - ms, dst - md
    cov = dc.T @ sc / n
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1
    u, s, vt = np.linalg.svd(cov)
    r = u @ np.diag(d) @ vt
    var = (sc ** 2).sum() / n
    scale = (s * d).sum() / var
    t = md - scale * r @ ms
    m = np.zeros((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = t
    return m


def _emu_warp(img, m, size=112):
    """Inverse-mapped bilinear warp in float, zero outside the image."""
    a = np.vstack([m, [0, 0, 1]])
    inv = np.linalg.inv(a)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    x0 = np.floor(sx).astype(np.int64)
    y0 = np.floor(sy).astype(np.int64)
    fx, fy = sx - x0, sy - y0
    h, w = img.shape[:2]
    f = img.astype(np.float64)
    out = np.zeros((size, size, img.shape[2]))
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            v = np.zeros((size, size, img.shape[2]))
            v[inside] = f[yy[inside], xx[inside]]
            out += v * (wy * wx)[..., None]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]])


def emulate_cli(argv):
    import onnxruntime as ort

    ap = argparse.ArgumentParser(prog="emulated-cli")
    ap.add_argument("command", choices=["faces"])
    ap.add_argument("--models", required=True)
    ap.add_argument("photo")
    ap.add_argument("--det-size", type=int, default=None)
    args = ap.parse_args(argv)
    noise = int(os.environ.get("CHECK_FACES_NOISE", "0"))
    use_cv2 = os.environ.get("CHECK_FACES_CV2") == "1"
    resize, warp = _emu_resize, _emu_warp
    if use_cv2:
        import cv2

        resize = lambda img, w, h: cv2.resize(img, (w, h))  # noqa: E731
        warp = lambda img, m: cv2.warpAffine(img, m, (112, 112), borderValue=0.0)  # noqa: E731

    so = ort.SessionOptions()
    so.log_severity_level = 3
    det = ort.InferenceSession(os.path.join(args.models, "antelopev2", "scrfd_10g_bnkps.onnx"), so,
                               providers=["CPUExecutionProvider"])
    rec = ort.InferenceSession(os.path.join(args.models, "arcface.onnx"), so, providers=["CPUExecutionProvider"])
    if use_cv2:
        rgb = np.ascontiguousarray(cv2.imread(args.photo)[:, :, ::-1])
    else:
        rgb = _emu_decode(args.photo, noise)

    def detect(size):
        h, w = rgb.shape[:2]
        if h / w > 1.0:
            nh, nw = size, int(size / (h / w))
        else:
            nw, nh = size, int(size * (h / w))
        det_scale = nh / h
        canvas = np.zeros((size, size, 3), np.uint8)
        canvas[:nh, :nw] = resize(rgb, nw, nh)
        blob = ((canvas.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outs = det.run(None, {det.get_inputs()[0].name: np.ascontiguousarray(blob)})
        outs = [o.reshape(-1, o.shape[-1]) for o in outs]  # accept (N, C) and (1, N, C)
        cand = []
        for li, s in enumerate((8, 16, 32)):
            fh, fw = size // s, size // s
            yy, xx = np.mgrid[0:fh, 0:fw]
            centres = np.repeat(np.stack([xx.ravel(), yy.ravel()], 1) * s, 2, axis=0).astype(np.float64)
            sc = outs[li][:, 0]
            bd = outs[li + 3].astype(np.float64) * s
            kd = outs[li + 6].astype(np.float64) * s
            for k in np.nonzero(sc >= 0.5)[0]:
                cx, cy = centres[k]
                box = np.array([cx - bd[k, 0], cy - bd[k, 1], cx + bd[k, 2], cy + bd[k, 3]]) / det_scale
                kps = (np.array([cx, cy]) + kd[k].reshape(5, 2)) / det_scale
                cand.append((float(sc[k]), box, kps))
        cand.sort(key=lambda c: -c[0])  # Python's sort is stable
        keep = []
        for c in cand:
            ok = True
            for k in keep:
                a, b = c[1], k[1]
                iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
                ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
                inter = iw * ih
                area = lambda q: (q[2] - q[0] + 1) * (q[3] - q[1] + 1)
                if inter / (area(a) + area(b) - inter) > 0.4:
                    ok = False
                    break
            if ok:
                keep.append(c)
        return keep

    faces = detect(args.det_size or 640)
    if not faces and args.det_size is None:
        faces = detect(320)  # retry for tight crops (RECIPE.md "Face analysis")
    out = []
    for score, box, kps in faces:
        m = _emu_umeyama(kps, ARCFACE_DST)
        crop = warp(rgb, m)
        x = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
        emb = rec.run(None, {rec.get_inputs()[0].name: np.ascontiguousarray(x)})[0].ravel()
        out.append(dict(bbox=[float(v) for v in box], score=score, kps=[[float(a), float(b)] for a, b in kps],
                        embedding=[float(v) for v in emb]))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


# --------------------------------------------------------------------------------------------


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--emulate-cli":
        emulate_cli(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                                      "tests", "fixtures", "faces"),
                    help="fixture root (holds models/, photos/, reference/)")
    ap.add_argument("--bin", help="path to the arc2face binary")
    ap.add_argument("--fresh-seed", type=int, default=None,
                    help="regenerate the fixture with this torch seed into a temp dir and check against it")
    ap.add_argument("--self-test", action="store_true",
                    help="use the built-in Python implementation instead of --bin")
    ap.add_argument("--noise", type=int, default=0, help="--self-test: add uniform noise in [-A, A] to the pixels")
    ap.add_argument("--cv2-primitives", action="store_true",
                    help="--self-test: decode, resize and warp with OpenCV (isolates the rest of the recipe)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per CLI run")
    ap.add_argument("--keep", action="store_true", help="keep the --fresh-seed fixture")
    args = ap.parse_args()

    if args.self_test:
        cmd_prefix = [sys.executable, os.path.abspath(__file__), "--emulate-cli"]
        os.environ["CHECK_FACES_NOISE"] = str(args.noise)
        os.environ["CHECK_FACES_CV2"] = "1" if args.cv2_primitives else "0"
    else:
        if not args.bin:
            ap.error("--bin is required (or --self-test)")
        binp = os.path.abspath(args.bin)
        if not os.path.exists(binp):
            sys.exit(f"binary not found: {binp}")
        cmd_prefix = [binp]

    tmp = None
    root = os.path.abspath(args.fixture)
    if args.fresh_seed is not None:
        tmp = tempfile.mkdtemp(prefix=f"faces_seed{args.fresh_seed}_")
        maker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "make_face_fixtures.py")
        print(f"regenerating the fixture with seed {args.fresh_seed} into {tmp}", flush=True)
        p = subprocess.run([sys.executable, maker, "--out", tmp, "--seed", str(args.fresh_seed)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            print(p.stdout[-3000:], p.stderr[-3000:])
            sys.exit("make_face_fixtures.py failed")
        print(p.stdout.strip())
        root = tmp
    try:
        rc = check_fixture(root, cmd_prefix, args.timeout)
    finally:
        if tmp and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp:
            print(f"fixture kept in {tmp}")
    sys.exit(rc)


if __name__ == "__main__":
    main()
