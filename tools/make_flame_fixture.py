#!/usr/bin/env python3
"""Write a synthetic FLAME-2020-layout model file for testing the app's FLAME reader.

    python tools/make_flame_fixture.py [--out tests/fixtures/flame]
        [--head assets/head/ict_head.safetensors] [--skin-vertices 66]
        [--eye-vertices 12] [--seed 7] [--check-image /tmp/flame_fixture.png]

Needs numpy, scipy, safetensors, fast-simplification (the same venv as tools/make_head_mesh.py).
No chumpy is needed: the pickle is written opcode-for-opcode by a small Python-2-style pickler.

Writes into --out:
  generic_model.pkl  the FLAME 2020 `generic_model.pkl` structure (see tools/FLAME_FORMAT.md):
      a Python-2-style protocol-2 pickle of a dict with the 10 keys
      f, J_regressor, kintree_table, J, bs_style, weights, posedirs, v_template, shapedirs, bs_type
      - py2 `str` opcodes (SHORT_BINSTRING/BINSTRING) for every string and for the raw array bytes
        (load in Python 3 with pickle.load(f, encoding="latin1"), as every FLAME loader does);
      - numpy arrays as numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), 'b') + BUILD
        (1, shape, numpy.dtype('f8', 0, 1) + state (3, '<', ...), False, raw bytes);
      - shapedirs as a chumpy object: GLOBAL 'chumpy.ch Ch', NEWOBJ, BUILD with the state dict
        real chumpy writes ({'_dirty_vars': set(['x']), '_itr': None, '_make_dense': False,
        '_make_sparse': False, '_depends_on_deps': {}, 'x': ndarray});
      - J_regressor as GLOBAL 'scipy.sparse.csc csc_matrix', NEWOBJ, BUILD with the old-scipy state
        dict {'_shape', 'maxprint', 'format', 'indices', 'indptr', 'data'} (int32 indices);
      - v_template (N,3) f8, J (5,3) f8, weights (N,5) f8, posedirs (N,3,36) f8,
        shapedirs (N,3,400) f8 (300 identity + 100 expression), f (M,3) uint32,
        kintree_table (2,5) int64 [[4294967295,0,1,1,1],[0,1,2,3,4]], bs_style 'lbs',
        bs_type 'lrotmin'.
  expected.json      facts for the Rust test (counts, joints, posed vertices from the numpy LBS
                     here).
(tests/fixtures/flame/README.md, describing the fixture, is written by hand.)

Content (NOT FLAME data): a coarse copy of the app's ICT-FaceKit head (MIT) - the skin decimated to
--skin-vertices, then two icosahedron eyeballs (--eye-vertices each, the person's left eye (+x)
first, like FLAME's 3931-4476 / 4477-5022); joints regressed from vertex rings (root: neck base,
neck: mid neck, jaw: below the ears, eyes: eyeball centres); jaw skinning weights from the ICT
jawOpen blendshape magnitude; smooth random shape/expression directions; small random pose
correctives. float64 everywhere like FLAME; the default size (93 vertices: the decimator lands on
69 skin vertices for a target of 66) keeps the file < 1 MB
(shapedirs alone is N*3*400*8 bytes).
"""
from __future__ import annotations

import argparse
import copyreg
import io
import json
import os
import pickle
import struct
import sys
import tempfile
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

N_SHAPE, N_EXPR, N_JOINTS = 300, 100, 5
KEY_ORDER = ["f", "J_regressor", "kintree_table", "J", "bs_style", "weights", "posedirs",
             "v_template", "shapedirs", "bs_type"]
KINTREE = np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64)
PARENTS = [-1, 0, 1, 1, 1]
JOINT_NAMES = ["global", "neck", "jaw", "left_eye", "right_eye"]


# ----------------------------------------------------------------------------- py2-style pickler
class ChumpyCh:
    """Stands for chumpy.ch.Ch when writing; holds the array in .x like real chumpy."""

    def __init__(self, x):
        self.x = np.asarray(x, dtype=np.float64)


class CscMatrix:
    """Stands for (old) scipy.sparse.csc.csc_matrix when writing."""

    def __init__(self, dense):
        dense = np.asarray(dense, dtype=np.float64)
        rows, cols = dense.shape
        indptr, indices, data = [0], [], []
        for c in range(cols):
            nz = np.nonzero(dense[:, c])[0]
            indices.extend(nz.tolist())
            data.extend(dense[nz, c].tolist())
            indptr.append(len(indices))
        self.state = {"_shape": (rows, cols), "maxprint": 50, "format": "csc",
                      "indices": np.array(indices, dtype=np.int32),
                      "indptr": np.array(indptr, dtype=np.int32),
                      "data": np.array(data, dtype=np.float64)}


def _reconstruct_sentinel():   # written as numpy.core.multiarray._reconstruct
    raise NotImplementedError


class _NdarraySentinel:        # written as numpy.ndarray
    pass


class _DtypeSentinel:          # written as numpy.dtype
    pass


FAKE_GLOBALS = {
    id(_reconstruct_sentinel): ("numpy.core.multiarray", "_reconstruct"),
    id(_NdarraySentinel): ("numpy", "ndarray"),
    id(_DtypeSentinel): ("numpy", "dtype"),
    id(ChumpyCh): ("chumpy.ch", "Ch"),
    id(CscMatrix): ("scipy.sparse.csc", "csc_matrix"),
}


class Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2.7 + numpy 1.x wrote it: str as BINSTRING, arrays via _reconstruct."""

    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, fh):
        super().__init__(fh, protocol=2, fix_imports=True)

    def save_py2str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2str
    dispatch[bytes] = save_py2str

    def save_global(self, obj, name=None):
        key = FAKE_GLOBALS.get(id(obj))
        if key is None:
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + f"{key[0]}\n{key[1]}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[types.FunctionType] = save_global

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            a = np.ascontiguousarray(obj)
            return (_reconstruct_sentinel, (_NdarraySentinel, (0,), b"b"),
                    (1, tuple(int(s) for s in a.shape), a.dtype, False, a.tobytes()))
        if isinstance(obj, np.dtype):
            order = "|" if obj.itemsize == 1 else "<"
            return (_DtypeSentinel, (obj.str[1:], 0, 1), (3, order, None, None, None, -1, -1, 0))
        if isinstance(obj, ChumpyCh):
            state = {"_dirty_vars": {"x"}, "_itr": None, "_make_dense": False,
                     "_make_sparse": False, "_depends_on_deps": {}, "x": obj.x}
            return (copyreg.__newobj__, (ChumpyCh,), state)
        if isinstance(obj, CscMatrix):
            return (copyreg.__newobj__, (CscMatrix,), obj.state)
        if isinstance(obj, (np.integer, np.floating)):
            raise TypeError("numpy scalar in pickle payload; convert to a Python number")
        return NotImplemented


def dumps_py2(obj):
    buf = io.BytesIO()
    Py2Pickler(buf).dump(obj)
    return buf.getvalue()


# ----------------------------------------------------------------------------- reading back
STUB_CHUMPY = '''
import numpy as np
class Ch(object):
    """Minimal stand-in for chumpy.ch.Ch: keeps the pickled state, exposes the array."""
    def __setstate__(self, state):
        self.__dict__.update(state)
    @property
    def r(self):
        return self.x
    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.x, dtype=dtype)
    @property
    def shape(self):
        return self.x.shape
'''


def load_with_stub_chumpy(path):
    """Load a FLAME pickle the way FLAME_PyTorch/DECA do (encoding='latin1'), with a throw-away
    chumpy package on sys.path when the real one is not importable."""
    import warnings
    with tempfile.TemporaryDirectory() as tmp:
        pkg = os.path.join(tmp, "chumpy")
        os.makedirs(pkg)
        open(os.path.join(pkg, "__init__.py"), "w").write("from .ch import Ch\n")
        open(os.path.join(pkg, "ch.py"), "w").write(STUB_CHUMPY)
        saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] == "chumpy"}
        sys.path.insert(0, tmp)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                with open(path, "rb") as fh:
                    return pickle.load(fh, encoding="latin1")
        finally:
            sys.path.remove(tmp)
            for k in [k for k in sys.modules if k.split(".")[0] == "chumpy"]:
                del sys.modules[k]
            sys.modules.update(saved)


# ----------------------------------------------------------------------------- FLAME LBS (numpy)
def rodrigues(r):
    r = np.asarray(r, dtype=np.float64)
    theta = np.linalg.norm(r)
    if theta < 1e-12:
        return np.eye(3)
    k = r / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def flame_lbs(m, betas, pose):
    """FLAME forward pass (SMPL-style LBS, as smplx.lbs / flame-fitting verts_core).
    betas: 400 (300 shape + 100 expression); pose: 15 = 5 joints x axis-angle
    (global, neck, jaw, left eye, right eye). Returns (vertices, posed joints, rest joints)."""
    v_shaped = m["v_template"] + m["shapedirs"] @ betas                    # (N,3)
    joints = m["J_regressor"] @ v_shaped                                  # (5,3)
    rots = [rodrigues(pose[3 * i:3 * i + 3]) for i in range(N_JOINTS)]
    feature = np.concatenate([(rots[i] - np.eye(3)).ravel() for i in range(1, N_JOINTS)])  # 36
    v_posed = v_shaped + m["posedirs"] @ feature                          # (N,3)
    g = [None] * N_JOINTS
    for i in range(N_JOINTS):
        local = np.eye(4)
        local[:3, :3] = rots[i]
        local[:3, 3] = joints[i] - (joints[PARENTS[i]] if PARENTS[i] >= 0 else 0)
        g[i] = local if PARENTS[i] < 0 else g[PARENTS[i]] @ local
    a = np.stack(g).copy()
    for i in range(N_JOINTS):
        a[i, :3, 3] -= g[i][:3, :3] @ joints[i]
    t = np.einsum("vk,kij->vij", m["weights"], a)                          # (N,4,4)
    verts = np.einsum("vij,vj->vi", t[:, :3, :3], v_posed) + t[:, :3, 3]
    return verts, np.stack([gi[:3, 3] for gi in g]), joints


# ----------------------------------------------------------------------------- geometry
def icosahedron(centre, radius):
    p = (1 + 5 ** 0.5) / 2
    v = np.array([[-1, p, 0], [1, p, 0], [-1, -p, 0], [1, -p, 0], [0, -1, p], [0, 1, p],
                  [0, -1, -p], [0, 1, -p], [p, 0, -1], [p, 0, 1], [-p, 0, -1], [-p, 0, 1]], float)
    f = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9],
                  [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2],
                  [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10],
                  [8, 6, 7], [9, 8, 1]])
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    return centre + radius * v, f


def smooth_fields(points, n_fields, rng, scale):
    """n_fields smooth random displacement fields over the points, each (N,3)."""
    lo, hi = points.min(0), points.max(0)
    u = (points - (lo + hi) / 2) / ((hi - lo).max() / 2)               # about [-1, 1]
    feats = [np.ones(len(u))]
    for k in range(3):
        for freq in (1, 2):
            feats += [np.sin(np.pi * freq * u[:, k] / 2), np.cos(np.pi * freq * u[:, k] / 2)]
    feats += [u[:, 0] * u[:, 1], u[:, 1] * u[:, 2], u[:, 0] * u[:, 2]]
    basis = np.stack(feats, 1)                                            # (N,F)
    coef = rng.normal(size=(basis.shape[1], 3, n_fields)) / np.sqrt(basis.shape[1])
    decay = 1.0 / np.sqrt(1.0 + np.arange(n_fields) / 10.0)
    return np.einsum("nf,fcj->ncj", basis, coef) * decay * scale         # (N,3,n_fields)


def ring_regressor(points, y0, half_width):
    sel = np.nonzero(np.abs(points[:, 1] - y0) < half_width)[0]
    if len(sel) < 3:
        sel = np.argsort(np.abs(points[:, 1] - y0))[:6]
    w = np.zeros(len(points))
    w[sel] = 1.0 / len(sel)
    return w


def build_model(head_path, skin_vertices, eye_vertices, seed):
    import make_head_mesh as mhm
    from safetensors import safe_open
    from scipy.spatial import cKDTree

    with safe_open(head_path, "np") as fh:
        t = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = fh.metadata()
    verts = t["vertices"].astype(np.float64)
    tris = t["triangles"].astype(np.int64)
    jaw = t["jaw_open"].astype(np.float64)
    n_skin = json.loads(meta["parts"])["skin"][1]
    eye_r = float(meta["eyeball_radius_m"])
    skin_t = tris[(tris < n_skin).all(1)]

    import fast_simplification as fs
    sv, st = fs.simplify(verts[:n_skin], skin_t,
                         target_count=max(8, int(round(len(skin_t) * skin_vertices / n_skin))),
                         agg=4.0)
    sv, st = np.asarray(sv, np.float64), np.asarray(st, np.int64)
    if eye_vertices != 12:
        raise SystemExit("--eye-vertices: only 12 (icosahedron) is implemented")
    # person's left eye (+x, image right) first, like FLAME
    centre_left, centre_right = t["eye_centers"][1].astype(float), t["eye_centers"][0].astype(float)
    el, ef = icosahedron(centre_left, eye_r)
    er, _ = icosahedron(centre_right, eye_r)
    n_s = len(sv)
    v = np.concatenate([sv, el, er])
    f = np.concatenate([st, ef + n_s, ef + n_s + 12])
    eye_left = (n_s, n_s + 12)
    eye_right = (n_s + 12, n_s + 24)
    n = len(v)

    # jaw weights from the ICT jawOpen magnitude at the nearest full-resolution skin vertex
    _, near = cKDTree(verts[:n_skin]).query(sv)
    mag = np.linalg.norm(jaw[:n_skin][near], axis=1)
    w_jaw = np.clip(mag / (0.5 * mag.max()), 0.0, 1.0)

    # joint regressor
    y_bottom = sv[:, 1].min()
    jreg = np.zeros((N_JOINTS, n))
    jreg[0, :n_s] = ring_regressor(sv, y_bottom + 0.035, 0.02)          # neck base
    jreg[1, :n_s] = ring_regressor(sv, y_bottom + 0.10, 0.025)          # mid neck
    # jaw hinge: skin vertices just in front of / below the ears, both sides (-> x = 0)
    hinge = np.array([0.065, -0.045, -0.03])
    dl = np.linalg.norm(sv - hinge, axis=1)
    dr = np.linalg.norm(sv - hinge * [-1, 1, 1], axis=1)
    for d in (dl, dr):
        sel = np.argsort(d)[:2]
        jreg[2, sel] += 0.25
    jreg[3, eye_left[0]:eye_left[1]] = 1.0 / 12
    jreg[4, eye_right[0]:eye_right[1]] = 1.0 / 12

    # skinning weights: root at the neck base, neck joint for the head, jaw, eyes
    y = sv[:, 1]
    s = np.clip((y - (y_bottom + 0.01)) / 0.09, 0, 1)
    s = s * s * (3 - 2 * s)
    weights = np.zeros((n, N_JOINTS))
    weights[:n_s, 0] = (1 - s) * (1 - w_jaw)
    weights[:n_s, 1] = s * (1 - w_jaw)
    weights[:n_s, 2] = w_jaw
    weights[eye_left[0]:eye_left[1], 3] = 1.0
    weights[eye_right[0]:eye_right[1], 4] = 1.0

    rng = np.random.default_rng(seed)
    shapedirs = np.concatenate([smooth_fields(v, N_SHAPE, rng, 0.004),
                                smooth_fields(v, N_EXPR, rng, 0.002)], axis=2)
    # expression directions act on the face, not on the eyeballs / back of the neck
    face_mask = np.clip((v[:, 2] + 0.02) / 0.05, 0, 1)
    face_mask[n_s:] = 0
    shapedirs[:, :, N_SHAPE:] *= face_mask[:, None, None]
    posedirs = rng.normal(scale=2e-4, size=(n, 3, 36))
    posedirs[n_s:] = 0.0  # eyeballs stay rigid

    model = {
        "f": f.astype(np.uint32),
        "J_regressor": jreg,
        "kintree_table": KINTREE.copy(),
        "J": jreg @ v,
        "bs_style": "lbs",
        "weights": weights,
        "posedirs": posedirs,
        "v_template": v,
        "shapedirs": shapedirs,
        "bs_type": "lrotmin",
    }
    info = {"n_skin": n_s, "eye_left": eye_left, "eye_right": eye_right, "w_jaw": w_jaw,
            "render": mhm}
    return model, info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "fixtures", "flame"))
    ap.add_argument("--head", default=os.path.join(HERE, "..", "assets", "head",
                                                   "ict_head.safetensors"))
    ap.add_argument("--skin-vertices", type=int, default=66)
    ap.add_argument("--eye-vertices", type=int, default=12)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--check-image", metavar="PNG", help="render neutral | jaw 0.3 | expression")
    args = ap.parse_args(argv)
    args.out = os.path.normpath(args.out)

    model, info = build_model(args.head, args.skin_vertices, args.eye_vertices, args.seed)
    n, n_s = len(model["v_template"]), info["n_skin"]

    payload = {k: model[k] for k in KEY_ORDER}
    payload["J_regressor"] = CscMatrix(model["J_regressor"])
    payload["shapedirs"] = ChumpyCh(model["shapedirs"])
    data = dumps_py2(payload)
    os.makedirs(args.out, exist_ok=True)
    pkl_path = os.path.join(args.out, "generic_model.pkl")
    with open(pkl_path, "wb") as fh:
        fh.write(data)

    # read it back like the Python FLAME loaders do and check every field
    import scipy.sparse as sp
    back = load_with_stub_chumpy(pkl_path)
    assert list(back.keys()) == KEY_ORDER, list(back.keys())
    assert type(back["shapedirs"]).__module__ == "chumpy.ch"
    assert sp.issparse(back["J_regressor"]) and back["J_regressor"].format == "csc"
    m = {k: model[k] for k in KEY_ORDER}
    m2 = dict(back)
    m2["shapedirs"] = np.asarray(back["shapedirs"])
    m2["J_regressor"] = back["J_regressor"].toarray()
    for k in KEY_ORDER:
        a, b = m[k], m2[k]
        if isinstance(a, str):
            assert a == b, k
        else:
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), k

    # expected values
    sv = model["v_template"][:n_s]
    # chin: the front-most vertex among those that follow the jaw fully
    chin = int(np.argmax(np.where(info["w_jaw"] > 0.9, sv[:, 2], -np.inf)))
    picks = {
        "chin": chin,
        "nose_tip": int(np.argmax(sv[:, 2])),
        "head_top": int(np.argmax(sv[:, 1])),
        "neck_bottom": int(np.argmin(sv[:, 1])),
        "left_eye_front": int(info["eye_left"][0] + np.argmax(model["v_template"][
            info["eye_left"][0]:info["eye_left"][1], 2])),
        "right_eye_front": int(info["eye_right"][0] + np.argmax(model["v_template"][
            info["eye_right"][0]:info["eye_right"][1], 2])),
    }
    idx = list(picks.values())

    def case(name, shape3, expr3, pose):
        betas = np.zeros(N_SHAPE + N_EXPR)
        betas[:3] = shape3
        betas[N_SHAPE:N_SHAPE + 3] = expr3
        verts, jposed, jrest = flame_lbs(m, betas, np.asarray(pose, float))
        return {"name": name,
                "shape": list(shape3), "expression": list(expr3),
                "pose": [float(x) for x in pose],
                "joints_rest": jrest.tolist(), "joints_posed": jposed.tolist(),
                "vertex_indices": idx,
                "vertices": verts[idx].tolist()}, verts

    jaw_pose = [0, 0, 0, 0, 0, 0, 0.3, 0, 0, 0, 0, 0, 0, 0, 0]
    full_pose = [0.1, -0.2, 0.05, 0.15, 0.1, -0.05, 0.25, 0.02, -0.01, 0.0, 0.2, 0.0,
                 0.0, 0.2, 0.0]
    c_main, v_main = case("jaw_0.3_expr", [0, 0, 0], [1.0, -0.5, 0.25], jaw_pose)
    c_jaw, v_jaw = case("jaw_0.3", [0, 0, 0], [0, 0, 0], jaw_pose)
    c_rest, _ = case("rest", [0, 0, 0], [0, 0, 0], [0.0] * 15)
    c_full, _ = case("full", [2.0, -1.0, 0.5], [1.0, -0.5, 0.25], full_pose)
    assert np.allclose(c_rest["vertices"], model["v_template"][idx], atol=1e-12)
    d_chin = np.array(v_jaw[chin]) - model["v_template"][chin]
    assert d_chin[1] < -0.002 and d_chin[2] < 0, f"jaw 0.3 rad: chin must go down/back {d_chin}"

    jr = sp.csc_matrix(model["J_regressor"])
    expected = {
        "description": "Synthetic FLAME-2020-layout model (no FLAME data); see README.md",
        "file": "generic_model.pkl",
        "pickle": {"protocol": 2, "python2_str": True, "top_level": "dict",
                   "keys": KEY_ORDER, "chumpy_keys": ["shapedirs"],
                   "sparse_keys": {"J_regressor": "scipy.sparse.csc.csc_matrix"}},
        "num_vertices": n, "num_faces": int(len(model["f"])), "num_joints": N_JOINTS,
        "num_shape": N_SHAPE, "num_expression": N_EXPR, "num_pose_correctives": 36,
        "dtypes": {"v_template": "<f8", "shapedirs": "<f8", "posedirs": "<f8", "weights": "<f8",
                   "J": "<f8", "J_regressor.data": "<f8", "J_regressor.indices": "<i4",
                   "J_regressor.indptr": "<i4", "f": "<u4", "kintree_table": "<i8"},
        "kintree_table": KINTREE.tolist(), "parents": PARENTS, "joint_names": JOINT_NAMES,
        "J_regressor_nnz": int(jr.nnz),
        "eyeball_vertices": {"left": list(info["eye_left"]), "right": list(info["eye_right"]),
                             "note": "half-open ranges [start, end); left = +x = person's left"},
        "samples": {
            "v_template[0]": model["v_template"][0].tolist(),
            "v_template[last]": model["v_template"][-1].tolist(),
            "f[0]": model["f"][0].tolist(), "f[last]": model["f"][-1].tolist(),
            "shapedirs[0,:,0]": model["shapedirs"][0, :, 0].tolist(),
            "shapedirs[0,:,300]": model["shapedirs"][0, :, 300].tolist(),
            "shapedirs[last,:,399]": model["shapedirs"][-1, :, 399].tolist(),
            "posedirs[0,:,0]": model["posedirs"][0, :, 0].tolist(),
            "posedirs[0,2,35]": float(model["posedirs"][0, 2, 35]),
            "weights[chin]": model["weights"][chin].tolist(),
            "J": model["J"].tolist(),
        },
        "sums": {k: float(np.sum(model[k])) for k in
                 ("v_template", "shapedirs", "posedirs", "weights", "J_regressor")},
        "vertex_picks": picks,
        "lbs": ("v_shaped = v_template + shapedirs . betas(300 shape ++ 100 expression); "
                "J = J_regressor . v_shaped; R_i = Rodrigues(pose[3i:3i+3]); "
                "v_posed = v_shaped + posedirs . concat_{i=1..4} ravel_rowmajor(R_i - I); "
                "G_0 = [R_0 | J_0], G_i = G_parent . [R_i | J_i - J_parent]; "
                "A_i = G_i . [I | -J_i]; v = sum_k weights[:,k] A_k . [v_posed; 1]; "
                "pose = (global, neck, jaw, left eye, right eye) axis-angle"),
        "tolerance": 1e-9,
        "cases": [c_main, c_jaw, c_rest, c_full],
    }
    with open(os.path.join(args.out, "expected.json"), "w") as fh:
        json.dump(expected, fh, indent=1)
        fh.write("\n")

    print(f"wrote {pkl_path} ({len(data)} bytes): {n} vertices ({n_s} skin + 2 x 12 eyeball), "
          f"{len(model['f'])} faces")
    print("joints (rest):")
    for name, j in zip(JOINT_NAMES, model["J"]):
        print(f"  {name:10s} {np.round(j, 4).tolist()}")
    print(f"chin vertex {chin}: rest {np.round(model['v_template'][chin], 4).tolist()} -> "
          f"jaw 0.3 {np.round(v_jaw[chin], 4).tolist()} -> +expr "
          f"{np.round(v_main[chin], 4).tolist()}")

    if args.check_image:
        mhm = info["render"]
        f = model["f"].astype(np.int64)
        imgs = [mhm.render_normals(model["v_template"], f, size=256, yaw_deg=30),
                mhm.render_normals(v_jaw, f, size=256, yaw_deg=30),
                mhm.render_normals(v_main, f, size=256, yaw_deg=30)]
        mhm.write_png(args.check_image, np.concatenate(imgs, 1))
        print("wrote", args.check_image)


if __name__ == "__main__":
    main()
