#!/usr/bin/env python3
"""Build Arc2Face Studio's built-in head mesh (assets/head/ict_head.safetensors) from ICT-FaceKit.

ICT-FaceKit (https://github.com/ICT-VGL/ICT-FaceKit, MIT licence, (c) 2020 USC Institute for
Creative Technologies) ships a 26719-vertex quad mesh of a generic head (FaceXModel/
generic_neutral_mesh.obj) plus one .obj per expression blendshape with the same topology.
This tool keeps the parts a FLAME head has, decimates them to about FLAME's size, carries the
jawOpen blendshape over to the decimated mesh, moves everything into the app's head frame and
writes one small safetensors file.

Usage
-----
    # 1. get the model folder out of a clone / mirror of the repository (only 3 files needed):
    git --git-dir=/path/to/ICT-FaceKit.git archive da5f95a607f5e6b37755b38d3385d7f2853732e5 \
        FaceXModel/generic_neutral_mesh.obj FaceXModel/jawOpen.obj \
        | tar -x -C /tmp/ict            # -> /tmp/ict/FaceXModel/
    # (a normal clone works too: the folder is <clone>/FaceXModel)
    # 2. build (needs numpy, scipy, safetensors, fast-simplification; Python >= 3.9):
    python tools/make_head_mesh.py /tmp/ict/FaceXModel \
        [--out assets/head/ict_head.safetensors] [--check-images /tmp/head_check]

Deterministic for given inputs and package versions (fast-simplification 0.2.0 was used).

What is kept (ICT-FaceKit README "Face Model Topology"; polygon index ranges, inclusive):
    #0 Face [0:9229] + #1 Head and Neck [9230:11143]  -> skin
    #3/#4 Eye socket left/right [13226:13629]/[13630:14033] -> skin: they join the eyelid rims
        and line the orbit behind the eyeball, so the skin has no eye holes (FLAME's skin has
        none either: its only open boundaries are the mouth slit and the neck cut)
    #7/#8 Eyeball left/right, the sclera part only ([21496:22295]/[23094:23893]): a closed
        surface with the cornea bulge; the iris meshes lie entirely inside it.
Dropped: mouth socket, gums/tongue, teeth, irises, lacrimal fluid, eye blend, eye occlusion,
eyelashes.  With the mouth socket gone the inner lip edge is an open boundary: the mouth is a
slit that the jaw blendshape opens (as in FLAME).  The lowest ring of neck quads (the start of
the shoulder flare, which FLAME does not have) is removed (--neck-trim-rings, default 1).

Decimation: fast-simplification (quadric edge collapse) on the skin and on each eyeball
separately, open borders preserved (the lip and neck edges keep every vertex).

jaw_open: each decimated vertex was produced by collapsing a connected cluster of original
vertices; its closest point on the original triangles around that cluster gives barycentric
coordinates, which interpolate the original jawOpen offsets.  Restricting the search to the
cluster keeps an upper-lip vertex from picking up the lower lip's motion where the lips touch.

Frame (the app's head frame): metres; +x = the head's own left = image right when the face
looks at the camera; +y up; +z out of the face towards the viewer (the face looks along +z);
origin = midpoint of the two eyeball-sphere centres.  ICT's frame is already x-left/y-up/z-
forward in centimetres, so the transform is a scale by 0.01 and a translation.

Triangles are counter-clockwise seen from outside (cross(b-a, c-a) points outward).

Landmarks come from the ICT README ("Multi-PIE 68 point facial landmarks indices" and the
left/right jawline substitutes), mapped to the decimated vertex that the landmark's cluster
collapsed into (or its nearest 1-ring neighbour).  Tensor names say left/right in IMAGE terms
(image-left = the person's right side, x < 0).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import zlib
from collections import defaultdict

import numpy as np

TOOL_VERSION = "1.0"
SOURCE_REPO = "https://github.com/ICT-VGL/ICT-FaceKit"
SOURCE_COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"
ATTRIBUTION = ("Head mesh derived from ICT-FaceKit (https://github.com/ICT-VGL/ICT-FaceKit), "
               "Copyright (c) 2020 USC Institute for Creative Technologies, MIT License.")

# polygon index ranges (inclusive) from the ICT-FaceKit README
POLY_FACE = (0, 9229)
POLY_HEAD_NECK = (9230, 11143)
POLY_EYE_SOCKET_L = (13226, 13629)
POLY_EYE_SOCKET_R = (13630, 14033)
POLY_SCLERA_L = (21496, 22295)   # person's left eye, +x
POLY_SCLERA_R = (23094, 23893)   # person's right eye, -x
N_ICT_VERTICES = 26719

# Multi-PIE 68 landmark vertex indices (ICT README, 0-based), iBUG order
ICT_LANDMARKS68 = [
    1225, 1888, 1052, 367, 1719, 1722, 2199, 1447, 966, 3661, 4390, 3927, 3924, 2608, 3272, 4088,
    3443, 268, 493, 1914, 2044, 1401, 3615, 4240, 4114, 2734, 2509, 978, 4527, 4942, 4857, 1140,
    2075, 1147, 4269, 3360, 1507, 1542, 1537, 1528, 1518, 1511, 3742, 3751, 3756, 3721, 3725,
    3732, 5708, 5695, 2081, 0, 4275, 6200, 6213, 6346, 6461, 5518, 5957, 5841, 5702, 5711, 5533,
    6216, 6207, 6470, 5517, 5966]
# "Right jawline (substitutes 0-7 in Multi PIE)" / "Left jawline (substitutes 9-16)"
ICT_JAW_RIGHT = [1278, 1272, 12, 1834, 243, 781, 2199, 1447]
ICT_JAW_LEFT = [3661, 4390, 3022, 2484, 4036, 2253, 3490, 3496]

# skeleton groups: name -> indices into the 68-point list (image-left/right naming)
OUTLINE_GROUPS = {
    "outline_brow_left": list(range(17, 22)),     # over the image-left eye (person's right)
    "outline_brow_right": list(range(22, 27)),
    "outline_nose_bridge": list(range(27, 31)),   # top to tip
    "outline_nose_bottom": list(range(31, 36)),   # image-left ala to image-right ala
    "outline_eye_left": list(range(36, 42)),      # image-left eye: outer, 2 upper, inner, 2 lower
    "outline_eye_right": list(range(42, 48)),     # image-right eye: inner, 2 upper, outer, 2 lower
    "outline_lips_outer": list(range(48, 60)),    # from image-left corner, upper lip first
    "outline_lips_inner": list(range(60, 68)),
}


# ----------------------------------------------------------------------------- OBJ + topology
def load_obj(path):
    verts, polys = [], []
    with open(path) as fh:
        for line in fh:
            if line.startswith("v "):
                verts.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("f "):
                polys.append([int(t.split("/")[0]) - 1 for t in line.split()[1:]])
    return np.asarray(verts, dtype=np.float64), polys


def triangulate(polys):
    return np.asarray([[p[0], p[i], p[i + 1]] for p in polys for i in range(1, len(p) - 1)],
                      dtype=np.int64).reshape(-1, 3)


def edge_counts(tris):
    e = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    e.sort(axis=1)
    uniq, counts = np.unique(e, axis=0, return_counts=True)
    return uniq, counts


def boundary_loops(tris):
    """Connected sets of boundary vertices (unordered)."""
    uniq, counts = edge_counts(tris)
    adj = defaultdict(list)
    for a, b in uniq[counts == 1]:
        adj[a].append(b)
        adj[b].append(a)
    seen, out = set(), []
    for s in adj:
        if s in seen:
            continue
        comp, stack = [], [s]
        while stack:
            x = stack.pop()
            if x in seen:
                continue
            seen.add(x)
            comp.append(x)
            stack.extend(adj[x])
        out.append(comp)
    return out


def orientation_report(tris):
    """(#edges used twice in the same direction, #non-manifold edges, #boundary edges)."""
    d = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    _, dcount = np.unique(d, axis=0, return_counts=True)
    same_dir = int((dcount > 1).sum())
    _, counts = edge_counts(tris)
    return same_dir, int((counts > 2).sum()), int((counts == 1).sum())


def compact(verts, tris):
    used = np.unique(tris)
    remap = np.full(len(verts), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return used, remap[tris]


def fit_sphere(p):
    a = np.c_[2 * p, np.ones(len(p))]
    s = np.linalg.lstsq(a, (p ** 2).sum(1), rcond=None)[0]
    c = s[:3]
    return c, float(np.sqrt(s[3] + c @ c))


def eyeball_centre(p):
    """Centre of the eyeball sphere: fit to the back half (the front has the cornea bulge)."""
    c, _ = fit_sphere(p)
    for _ in range(3):
        c, r = fit_sphere(p[p[:, 2] < c[2]])
    return c, r


# ----------------------------------------------------------------------------- decimation
def decimate(points, tris, target_vertices, agg=4.0):
    """Quadric decimation with preserved borders. Returns (new_points, new_tris, mapping) where
    mapping[i] = decimated vertex that original vertex i was collapsed into."""
    import fast_simplification as fs

    n_tris_target = int(round(len(tris) * target_vertices / len(points)))
    newp, newt, collapses = fs.simplify(points, tris, target_count=n_tris_target,
                                        preserve_border=True, return_collapses=True, agg=agg)
    # clusters: union-find over the collapse history (i1 collapsed into i0)
    parent = np.arange(len(points))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i0, i1 in collapses:
        parent[find(i1)] = find(i0)
    roots = np.array([find(i) for i in range(len(points))])
    reps = np.unique(roots)
    if len(reps) != len(newp):
        raise RuntimeError(f"cluster count {len(reps)} != decimated vertex count {len(newp)}")
    rep_index = np.full(len(points), -1, dtype=np.int64)
    rep_index[reps] = np.arange(len(reps))   # survivors keep their original order
    mapping = rep_index[roots]
    # sanity: the decimated triangles must be the original ones pushed through the mapping
    # (minus the collapsed ones)
    mt = mapping[tris]
    keep = (mt[:, 0] != mt[:, 1]) & (mt[:, 1] != mt[:, 2]) & (mt[:, 2] != mt[:, 0])
    a = np.sort(np.sort(mt[keep], axis=1), axis=0)
    b = np.sort(np.sort(newt, axis=1), axis=0)
    if a.shape != b.shape or not np.array_equal(np.unique(a, axis=0), np.unique(b, axis=0)):
        raise RuntimeError("collapse history does not reproduce the decimated triangles")
    return np.asarray(newp, dtype=np.float64), np.asarray(newt, dtype=np.int64), mapping


def closest_point_on_triangles(p, a, b, c):
    """Closest points from one point p to many triangles (a, b, c: (K,3)).
    Returns (distance^2 (K,), barycentric (K,3)). Ericson, Real-Time Collision Detection 5.1.5."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(1), (ac * ap).sum(1)
    bp = p - b
    d3, d4 = (ab * bp).sum(1), (ac * bp).sum(1)
    cp = p - c
    d5, d6 = (ab * cp).sum(1), (ac * cp).sum(1)
    vc = d1 * d4 - d3 * d2
    vb = d5 * d2 - d1 * d6
    va = d3 * d6 - d5 * d4
    k = len(a)
    bary = np.zeros((k, 3))
    done = np.zeros(k, dtype=bool)

    def put(mask, w):
        nonlocal done
        m = mask & ~done
        bary[m] = w[m]
        done |= m

    ones, zeros = np.ones(k), np.zeros(k)
    put((d1 <= 0) & (d2 <= 0), np.c_[ones, zeros, zeros])
    put((d3 >= 0) & (d4 <= d3), np.c_[zeros, ones, zeros])
    put((d6 >= 0) & (d5 <= d6), np.c_[zeros, zeros, ones])
    with np.errstate(divide="ignore", invalid="ignore"):
        v = d1 / (d1 - d3)
        put((vc <= 0) & (d1 >= 0) & (d3 <= 0), np.c_[1 - v, v, zeros])
        w = d2 / (d2 - d6)
        put((vb <= 0) & (d2 >= 0) & (d6 <= 0), np.c_[1 - w, zeros, w])
        w = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        put((va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0), np.c_[zeros, 1 - w, w])
        denom = 1.0 / (va + vb + vc)
        v, w = vb * denom, vc * denom
        put(np.ones(k, dtype=bool), np.c_[1 - v - w, v, w])
    bary = np.nan_to_num(bary)
    q = bary[:, :1] * a + bary[:, 1:2] * b + bary[:, 2:] * c
    return ((q - p) ** 2).sum(1), bary


def transfer_offsets(orig_p, orig_t, new_p, mapping, offsets):
    """Barycentric transfer of per-vertex offsets onto decimated vertices (cluster-restricted)."""
    vert_tris = defaultdict(list)
    for ti, t in enumerate(orig_t):
        for v in t:
            vert_tris[v].append(ti)
    clusters = defaultdict(list)
    for v, d in enumerate(mapping):
        clusters[d].append(v)
    out = np.zeros((len(new_p), 3))
    max_dist = 0.0
    for d in range(len(new_p)):
        cand = sorted({ti for v in clusters[d] for ti in vert_tris[v]})
        tt = orig_t[cand]
        d2, bary = closest_point_on_triangles(new_p[d], orig_p[tt[:, 0]], orig_p[tt[:, 1]],
                                              orig_p[tt[:, 2]])
        j = int(np.argmin(d2))
        max_dist = max(max_dist, float(np.sqrt(d2[j])))
        out[d] = bary[j] @ offsets[tt[j]]
    return out, max_dist


# ----------------------------------------------------------------------------- check renders
def vertex_normals(v, t):
    n = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    vn = np.zeros_like(v)
    for k in range(3):
        np.add.at(vn, t[:, k], n)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def render_normals(v, t, size=512, yaw_deg=0.0, half_extent=0.16, marks=()):
    """Orthographic z-buffered normal map, colour = n*0.5+0.5, grey background, view along -z.
    yaw rotates the head about +y (positive = head turns to its own left = towards image right)."""
    th = np.radians(yaw_deg)
    rot = np.array([[np.cos(th), 0, np.sin(th)], [0, 1, 0], [-np.sin(th), 0, np.cos(th)]])
    p = v @ rot.T
    nrm = vertex_normals(v, t) @ rot.T
    px = p[:, 0] / half_extent * size / 2 + size / 2
    py = size / 2 - (p[:, 1] + 0.03) / half_extent * size / 2
    img = np.full((size, size, 3), 127.0)
    zb = np.full((size, size), -np.inf)
    for tri in t:
        x, y, z = px[tri], py[tri], p[tri, 2]
        x0, x1 = max(int(np.floor(x.min())), 0), min(int(np.ceil(x.max())), size - 1)
        y0, y1 = max(int(np.floor(y.min())), 0), min(int(np.ceil(y.max())), size - 1)
        if x0 > x1 or y0 > y1:
            continue
        det = (x[1] - x[0]) * (y[2] - y[0]) - (x[2] - x[0]) * (y[1] - y[0])
        if abs(det) < 1e-12:
            continue
        gx, gy = np.meshgrid(np.arange(x0, x1 + 1) + 0.5, np.arange(y0, y1 + 1) + 0.5)
        w1 = ((gx - x[0]) * (y[2] - y[0]) - (x[2] - x[0]) * (gy - y[0])) / det
        w2 = ((x[1] - x[0]) * (gy - y[0]) - (gx - x[0]) * (y[1] - y[0])) / det
        w0 = 1 - w1 - w2
        m = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        if not m.any():
            continue
        zz = w0 * z[0] + w1 * z[1] + w2 * z[2]
        sub = zb[y0:y1 + 1, x0:x1 + 1]
        m &= zz > sub
        if not m.any():
            continue
        sub[m] = zz[m]
        n = w0[m, None] * nrm[tri[0]] + w1[m, None] * nrm[tri[1]] + w2[m, None] * nrm[tri[2]]
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        img[y0:y1 + 1, x0:x1 + 1][m] = (n * 0.5 + 0.5) * 255
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    for i, colour in marks:
        cx, cy = int(px[i]), int(py[i])
        img[max(cy - 1, 0):cy + 2, max(cx - 1, 0):cx + 2] = colour
    return img


def write_png(path, img):
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                 + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------- main
def canonical_header(blob):
    """safetensors writes the metadata map in hash order; sort it so the file is byte-stable."""
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > n:
        raise RuntimeError("canonical header longer than the original")
    return blob[:8] + text + b" " * (n - len(text)) + blob[8 + n:]


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("facex_dir", help="extracted ICT-FaceKit FaceXModel folder")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "assets", "head",
                                                  "ict_head.safetensors"))
    ap.add_argument("--skin-vertices", type=int, default=4300,
                    help="target vertex count of the decimated skin (default 4300)")
    ap.add_argument("--eye-vertices", type=int, default=400,
                    help="target vertex count per decimated eyeball (default 400)")
    ap.add_argument("--aggressiveness", type=float, default=4.0,
                    help="fast-simplification 'agg' (default 4; 7, its default, leaves creases "
                         "at the mouth corners)")
    ap.add_argument("--neck-trim-rings", type=int, default=1,
                    help="rings of quads removed at the bottom of the neck (default 1)")
    ap.add_argument("--source-commit", default=SOURCE_COMMIT,
                    help="ICT-FaceKit commit the folder was extracted from (for the metadata)")
    ap.add_argument("--check-images", metavar="PREFIX",
                    help="also write PREFIX_front.png, PREFIX_jaw.png, PREFIX_yaw45.png, ...")
    args = ap.parse_args(argv)
    args.out = os.path.normpath(args.out)

    from safetensors.numpy import save

    neutral_path = os.path.join(args.facex_dir, "generic_neutral_mesh.obj")
    jaw_path = os.path.join(args.facex_dir, "jawOpen.obj")
    v_all, polys = load_obj(neutral_path)
    v_jaw, polys_jaw = load_obj(jaw_path)
    if len(v_all) != N_ICT_VERTICES or v_jaw.shape != v_all.shape or len(polys) != len(polys_jaw):
        sys.exit(f"unexpected ICT mesh: {len(v_all)} vertices, jaw {v_jaw.shape}")
    jaw_off_all = v_jaw - v_all

    def prange(r):
        return polys[r[0]:r[1] + 1]

    skin_polys = (prange(POLY_FACE) + prange(POLY_HEAD_NECK) + prange(POLY_EYE_SOCKET_L)
                  + prange(POLY_EYE_SOCKET_R))
    # neck trim: peel rings of polygons touching the lowest boundary loop
    for _ in range(args.neck_trim_rings):
        loops = boundary_loops(triangulate(skin_polys))
        neck = set(min(loops, key=lambda lp: v_all[lp, 1].mean()))
        skin_polys = [p for p in skin_polys if not any(i in neck for i in p)]
    skin_t_full = triangulate(skin_polys)

    parts = []   # (name, original vertex ids, decimated points, tris, mapping, local tris)
    for name, tris_full, target in (
            ("skin", skin_t_full, args.skin_vertices),
            ("eye_l", triangulate(prange(POLY_SCLERA_L)), args.eye_vertices),
            ("eye_r", triangulate(prange(POLY_SCLERA_R)), args.eye_vertices)):
        ids, local_t = compact(v_all, tris_full)
        newp, newt, mapping = decimate(v_all[ids], local_t, target, args.aggressiveness)
        parts.append((name, ids, newp, newt, mapping, local_t))
        print(f"{name}: {len(ids)} -> {len(newp)} vertices, "
              f"{len(local_t)} -> {len(newt)} triangles")

    # jaw offsets
    verts, jaw, tris, offset = [], [], [], 0
    part_range = {}
    orig_to_new = {}
    for name, ids, newp, newt, mapping, local_t in parts:
        off, dmax = transfer_offsets(v_all[ids], local_t, newp, mapping, jaw_off_all[ids])
        print(f"{name}: jaw offsets transferred, max distance to original surface "
              f"{dmax * 10:.3f} mm")
        verts.append(newp)
        jaw.append(off)
        tris.append(newt + offset)
        part_range[name] = (offset, offset + len(newp))
        for local, orig in enumerate(ids):
            orig_to_new[int(orig)] = int(mapping[local]) + offset
        offset += len(newp)
    verts = np.concatenate(verts)
    jaw = np.concatenate(jaw)
    tris = np.concatenate(tris)

    # eye centres (original cm frame), person's left eye = +x = image right
    c_l, r_l = eyeball_centre(v_all[np.unique(triangulate(prange(POLY_SCLERA_L)))])
    c_r, r_r = eyeball_centre(v_all[np.unique(triangulate(prange(POLY_SCLERA_R)))])
    origin = (c_l + c_r) / 2

    # frame: cm -> m, origin between the eyeball centres (ICT axes already match)
    verts = (verts - origin) * 0.01
    jaw = jaw * 0.01
    eye_centers = np.stack([c_r, c_l]) - origin   # image-left (person's right) first
    eye_centers = eye_centers * 0.01
    eye_radius = 0.01 * (r_l + r_r) / 2
    v_orig_m = (v_all - origin) * 0.01

    # adjacency of the decimated mesh
    nbrs = defaultdict(set)
    for a, b, c in tris:
        nbrs[a] |= {b, c}
        nbrs[b] |= {a, c}
        nbrs[c] |= {a, b}

    def to_new(orig_idx):
        d = orig_to_new[orig_idx]
        cand = [d] + sorted(nbrs[d])
        dist = np.linalg.norm(verts[cand] - v_orig_m[orig_idx], axis=1)
        return cand[int(np.argmin(dist))]

    lm68 = [to_new(i) for i in ICT_LANDMARKS68]
    jaw_line = [to_new(i) for i in ICT_JAW_RIGHT] + [lm68[8]] + \
        [to_new(i) for i in ICT_JAW_LEFT]

    # 5 points: eyes = sclera vertex nearest the cornea apex (the pupil); image-left eye first
    def pupil_vertex(part):
        lo, hi = part_range[part]
        return lo + int(np.argmax(verts[lo:hi, 2]))   # the cornea apex (eyes look along +z)

    eye_img_left = pupil_vertex("eye_r")
    eye_img_right = pupil_vertex("eye_l")
    landmarks5 = np.array([eye_img_left, eye_img_right, lm68[30], lm68[48], lm68[54]],
                          dtype=np.int64)

    # sanity on the layout
    assert verts[landmarks5[0], 0] < 0 < verts[landmarks5[1], 0], "eye order"
    assert verts[landmarks5[3], 0] < 0 < verts[landmarks5[4], 0], "mouth corner order"
    assert verts[lm68[36], 0] < 0 and verts[lm68[45], 0] > 0, "68-point order"

    # orientation
    same_dir, non_manifold, n_border = orientation_report(tris)
    # skin: signed volume of the cones from the neck-loop centroid (the neck cap then adds ~0,
    # the small mouth slit is left open) -> positive when the triangles face outward
    skin_t = tris[(tris < part_range["skin"][1]).all(1)]
    neck_loop = min(boundary_loops(skin_t), key=lambda lp: verts[lp, 1].mean())
    apex = verts[neck_loop].mean(0)
    a, b, c = (verts[skin_t[:, k]] - apex for k in range(3))
    skin_vol = float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6)
    vol = {}
    for name in ("eye_l", "eye_r"):
        lo, hi = part_range[name]
        tt = tris[(tris >= lo).all(1) & (tris < hi).all(1)]
        vol[name] = float(np.einsum("ij,ij->i", verts[tt[:, 0]],
                                    np.cross(verts[tt[:, 1]], verts[tt[:, 2]])).sum() / 6)
    loops = boundary_loops(tris)
    print(f"orientation: {same_dir} edges traversed twice in the same direction, "
          f"{non_manifold} non-manifold edges, {n_border} border edges in {len(loops)} loops "
          f"(sizes {sorted(len(lp) for lp in loops)}); signed volumes (positive = outward): skin "
          f"{skin_vol * 1e6:.0f} cm^3, eyeballs {vol['eye_l'] * 1e6:.2f} / "
          f"{vol['eye_r'] * 1e6:.2f} cm^3")
    if same_dir or non_manifold or min(vol.values()) <= 0 or skin_vol <= 0:
        sys.exit("orientation check failed")

    eyeball_vertices = np.arange(part_range["eye_l"][0], part_range["eye_r"][1], dtype=np.int64)

    tensors = {
        "vertices": verts.astype(np.float32),
        "jaw_open": jaw.astype(np.float32),
        "triangles": tris.astype(np.int32),
        "eye_centers": eye_centers.astype(np.float32),
        "landmarks5": landmarks5,
        "outline_jaw": np.array(jaw_line, dtype=np.int64),
        "eyeball_vertices": eyeball_vertices,
    }
    for name, idx in OUTLINE_GROUPS.items():
        tensors[name] = np.array([lm68[i] for i in idx], dtype=np.int64)
    tensors["landmarks68"] = np.array(lm68, dtype=np.int64)

    metadata = {
        "source": SOURCE_REPO,
        "source_commit": args.source_commit,
        "source_files": json.dumps({
            "FaceXModel/generic_neutral_mesh.obj": sha256(neutral_path),
            "FaceXModel/jawOpen.obj": sha256(jaw_path)}),
        "license": "MIT",
        "attribution": ATTRIBUTION,
        "tool": "tools/make_head_mesh.py",
        "tool_version": TOOL_VERSION,
        "units": "metres",
        "frame": ("+x = head's own left = image right when facing the camera, +y up, "
                  "+z out of the face towards the viewer; origin = midpoint of the eyeball "
                  "centres"),
        "triangle_winding": "counter-clockwise seen from outside",
        "jaw_open": "per-vertex offset at blendshape weight 1.0 (ICT jawOpen), metres",
        "landmark_sides": "left/right in tensor names are image-left/image-right "
                          "(image-left = the person's right, x < 0)",
        "landmarks5_order": "image-left eye, image-right eye, nose tip, image-left mouth corner, "
                            "image-right mouth corner (insightface/SCRFD order)",
        "eyeball_radius_m": f"{eye_radius:.5f}",
        "parts": json.dumps({k: list(v) for k, v in part_range.items()}),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "wb") as fh:
        fh.write(canonical_header(save(tensors, metadata=metadata)))

    lo, hi = verts.min(0), verts.max(0)
    print(f"vertices {len(verts)} (skin {part_range['skin'][1]}, eyeballs "
          f"{len(eyeball_vertices)}), triangles {len(tris)}")
    print(f"bbox min {np.round(lo, 4).tolist()} max {np.round(hi, 4).tolist()} "
          f"size {np.round(hi - lo, 4).tolist()} m")
    print(f"eye centres {np.round(eye_centers, 4).tolist()} (distance "
          f"{np.linalg.norm(eye_centers[1] - eye_centers[0]):.4f} m), eyeball radius "
          f"{eye_radius:.4f} m")
    print(f"jaw_open max offset {np.linalg.norm(jaw, axis=1).max():.4f} m; "
          f"chin (lm 8) offset {np.round(jaw[lm68[8]], 4).tolist()}")
    print(f"landmarks5 {landmarks5.tolist()} at {np.round(verts[landmarks5], 4).tolist()}")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")

    if args.check_images:
        red, yellow, cyan = (255, 0, 0), (255, 255, 0), (0, 255, 255)
        marks = [(i, yellow) for i in jaw_line]
        for name, idx in OUTLINE_GROUPS.items():
            marks += [(lm68[i], cyan) for i in idx]
        marks += [(int(i), red) for i in landmarks5]
        views = [("front", verts, 0, ()), ("jaw", verts + jaw, 0, ()),
                 ("yaw45", verts, 45, ()), ("jaw_yaw45", verts + jaw, 45, ()),
                 ("side", verts, 90, ()), ("landmarks", verts, 0, marks)]
        for name, v, yaw, mk in views:
            path = f"{args.check_images}_{name}.png"
            write_png(path, render_normals(v, tris, yaw_deg=yaw, marks=mk))
            print("wrote", path)


if __name__ == "__main__":
    main()
