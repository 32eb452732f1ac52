//! FLAME model files (`generic_model.pkl` of FLAME 2020, `flame2023.pkl`, …) and FLAME's linear
//! blend skinning. tools/FLAME_FORMAT.md describes the files: a pickled dict of numpy arrays
//! (Python 2 `_reconstruct` style or Python 3 `_frombuffer` style), `shapedirs` possibly a chumpy
//! `Ch`, `J_regressor` a scipy `csc_matrix`. Everything is kept in f64, as in the file, so the
//! skinning matches the reference implementations to rounding.

use std::path::Path;

use super::pickle::{self, Value};

/// Identity directions come first in `shapedirs`; the rest are expression directions.
pub const FLAME_SHAPE_DIMS: usize = 300;

/// A FLAME model as read from its file, in the file's own frame (metres, +y up, +z out of the
/// face, origin where FLAME put it).
#[derive(Clone)]
pub struct FlameModel {
    num_vertices: usize,
    /// (N, 3) row-major.
    v_template: Vec<f64>,
    /// (N, 3, K) row-major.
    shapedirs: Vec<f64>,
    num_betas: usize,
    /// (N, 3, 9·(J−1)) row-major.
    posedirs: Vec<f64>,
    /// (N, J) row-major.
    weights: Vec<f64>,
    /// (J, N) row-major, dense.
    j_regressor: Vec<f64>,
    j_regressor_nnz: usize,
    parents: Vec<Option<usize>>,
    faces: Vec<[u32; 3]>,
}

/// Counts only: the arrays run to tens of megabytes.
impl std::fmt::Debug for FlameModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlameModel")
            .field("vertices", &self.num_vertices)
            .field("faces", &self.faces.len())
            .field("joints", &self.parents.len())
            .field("shape", &self.num_shape())
            .field("expression", &self.num_expression())
            .finish_non_exhaustive()
    }
}

/// The result of [`FlameModel::lbs`].
#[derive(Debug, Clone)]
pub struct Skinned {
    /// Posed vertices, file frame.
    pub vertices: Vec<[f64; 3]>,
    /// Joint positions regressed from the shaped mesh, before posing.
    pub joints_rest: Vec<[f64; 3]>,
    /// Joint positions after posing (the kinematic chain's translations).
    pub joints_posed: Vec<[f64; 3]>,
}

/// A numpy array read from the pickle, converted to f64 in C order.
struct Array {
    shape: Vec<usize>,
    data: Vec<f64>,
}

impl FlameModel {
    /// Reads a FLAME model file. Errors name the file and say what is wrong with it.
    pub fn read(path: &Path) -> Result<FlameModel, String> {
        let name = crate::file_name(path);
        let bytes = std::fs::read(path).map_err(|e| format!("{name}: {e}"))?;
        Self::from_bytes(&bytes).map_err(|e| format!("{name}: {e}"))
    }

    /// Reads a FLAME model from the bytes of its file.
    pub fn from_bytes(bytes: &[u8]) -> Result<FlameModel, String> {
        let root = pickle::parse(bytes).map_err(|e| e.to_string())?;
        if !matches!(root, Value::Dict(_)) {
            return Err(format!("not a FLAME model: the pickle holds a {}, not a dict of arrays", root.describe()));
        }
        let required = ["v_template", "f", "shapedirs", "posedirs", "weights", "J_regressor", "kintree_table"];
        let missing: Vec<&str> = required.iter().copied().filter(|k| root.get(k).is_none()).collect();
        if !missing.is_empty() {
            let keys = root.keys();
            let shown = if keys.is_empty() { "none".to_string() } else { keys.join(", ") };
            return Err(format!("not a FLAME model: no {} (its keys: {shown})", missing.join(", ")));
        }
        let get = |key: &str| -> Result<Array, String> {
            let value = root.get(key).ok_or_else(|| format!("no {key}"))?;
            array(&value).map_err(|e| format!("{key}: {e}"))
        };

        let v_template = get("v_template")?;
        let n = match v_template.shape[..] {
            [n, 3] if n > 0 => n,
            _ => return Err(format!("v_template has shape {:?}, expected (N, 3)", v_template.shape)),
        };
        let shapedirs = get("shapedirs")?;
        let num_betas = match shapedirs.shape[..] {
            [rows, 3, k] if rows == n => k,
            _ => return Err(format!("shapedirs has shape {:?}, expected ({n}, 3, K)", shapedirs.shape)),
        };
        let kintree = get("kintree_table")?;
        let joints = match kintree.shape[..] {
            [2, j] if j > 0 => j,
            _ => return Err(format!("kintree_table has shape {:?}, expected (2, J)", kintree.shape)),
        };
        // Row 0 holds parents by joint id (row 1); the root's parent is stored as −1 or 2³²−1.
        let mut parents = vec![None; joints];
        for col in 0..joints {
            let (parent, id) = (kintree.data[col], kintree.data[joints + col]);
            let id = id as usize;
            if id >= joints || kintree.data[joints + col] < 0.0 {
                return Err(format!("kintree_table names joint {id} of {joints}"));
            }
            parents[id] = if parent < 0.0 || parent >= joints as f64 { None } else { Some(parent as usize) };
        }
        for (i, parent) in parents.iter().enumerate() {
            match parent {
                Some(p) if *p >= i => return Err(format!("kintree_table: joint {i}'s parent {p} does not come before it")),
                None if i != 0 => return Err(format!("kintree_table: joint {i} has no parent; only joint 0 may be the root")),
                _ => {}
            }
        }
        let posedirs = get("posedirs")?;
        let correctives = 9 * (joints - 1);
        if posedirs.shape != [n, 3, correctives] {
            return Err(format!("posedirs has shape {:?}, expected ({n}, 3, {correctives})", posedirs.shape));
        }
        let weights = get("weights")?;
        if weights.shape != [n, joints] {
            return Err(format!("weights has shape {:?}, expected ({n}, {joints})", weights.shape));
        }
        let (j_regressor, j_regressor_nnz) = regressor(&root.get("J_regressor").unwrap_or(Value::None), joints, n)?;
        let f = get("f")?;
        if f.shape.len() != 2 || f.shape[1] != 3 || f.shape[0] == 0 {
            return Err(format!("f has shape {:?}, expected (M, 3)", f.shape));
        }
        let mut faces = Vec::with_capacity(f.shape[0]);
        for tri in f.data.chunks_exact(3) {
            if tri.iter().any(|&i| i < 0.0 || i >= n as f64 || i.fract() != 0.0) {
                return Err(format!("f: triangle {tri:?} names a vertex outside 0..{n}"));
            }
            faces.push([tri[0] as u32, tri[1] as u32, tri[2] as u32]);
        }
        Ok(FlameModel {
            num_vertices: n,
            v_template: v_template.data,
            shapedirs: shapedirs.data,
            num_betas,
            posedirs: posedirs.data,
            weights: weights.data,
            j_regressor,
            j_regressor_nnz,
            parents,
            faces,
        })
    }

    pub fn num_vertices(&self) -> usize {
        self.num_vertices
    }

    pub fn num_joints(&self) -> usize {
        self.parents.len()
    }

    /// Identity coefficients: the first 300 of `shapedirs` (all of them in a smaller model).
    pub fn num_shape(&self) -> usize {
        self.num_betas.min(FLAME_SHAPE_DIMS)
    }

    /// Expression coefficients: `shapedirs` beyond the first 300 (100 in FLAME 2020).
    pub fn num_expression(&self) -> usize {
        self.num_betas.saturating_sub(FLAME_SHAPE_DIMS)
    }

    /// Pose-corrective directions: 9 per non-root joint (36 in FLAME).
    pub fn num_pose_correctives(&self) -> usize {
        9 * (self.num_joints() - 1)
    }

    /// Each joint's parent (`None` for the root, joint 0).
    pub fn parents(&self) -> &[Option<usize>] {
        &self.parents
    }

    pub fn faces(&self) -> &[[u32; 3]] {
        &self.faces
    }

    /// The mean head, (N, 3) row-major, file frame.
    pub fn template(&self) -> &[f64] {
        &self.v_template
    }

    /// Shape and expression directions, (N, 3, K) row-major.
    pub fn shapedirs(&self) -> &[f64] {
        &self.shapedirs
    }

    /// Pose-corrective directions, (N, 3, 9·(J−1)) row-major.
    pub fn posedirs(&self) -> &[f64] {
        &self.posedirs
    }

    /// Skinning weights, (N, J) row-major.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// The joint regressor, (J, N) row-major (dense; the file stores it sparse).
    pub fn j_regressor(&self) -> &[f64] {
        &self.j_regressor
    }

    /// Non-zero entries of the joint regressor as stored in the file.
    pub fn j_regressor_nnz(&self) -> usize {
        self.j_regressor_nnz
    }

    /// FLAME's forward pass (smplx `lbs`, flame-fitting `verts_core`): shape and expression
    /// blendshapes, joints regressed from the shaped mesh, Rodrigues rotations, pose correctives
    /// (`lrotmin`: R − I of every non-root joint), the kinematic chain and skinning.
    ///
    /// `shape` and `expression` give the first coefficients (missing ones are 0, extra ones
    /// ignored); `pose` one axis-angle vector per joint in file order (FLAME: global, neck, jaw,
    /// left eye, right eye; missing joints unrotated). Output in the file's frame.
    pub fn lbs(&self, shape: &[f64], expression: &[f64], pose: &[[f64; 3]]) -> Skinned {
        let (n, k, joints) = (self.num_vertices, self.num_betas, self.num_joints());
        let mut betas = vec![0.0; k];
        for (b, &s) in betas.iter_mut().zip(shape.iter().take(self.num_shape())) {
            *b = s;
        }
        for (b, &e) in betas.iter_mut().skip(FLAME_SHAPE_DIMS).zip(expression) {
            *b = e;
        }
        let active: Vec<(usize, f64)> = betas.iter().copied().enumerate().filter(|&(_, b)| b != 0.0).collect();
        let mut v_shaped = self.v_template.clone();
        if !active.is_empty() {
            for (row, v) in v_shaped.iter_mut().enumerate() {
                let dirs = &self.shapedirs[row * k..(row + 1) * k];
                *v += active.iter().map(|&(j, b)| dirs[j] * b).sum::<f64>();
            }
        }

        let mut joints_rest = vec![[0.0; 3]; joints];
        for (j, joint) in joints_rest.iter_mut().enumerate() {
            let row = &self.j_regressor[j * n..(j + 1) * n];
            for (v, &w) in row.iter().enumerate() {
                if w != 0.0 {
                    for c in 0..3 {
                        joint[c] += w * v_shaped[3 * v + c];
                    }
                }
            }
        }

        let rotations: Vec<[[f64; 3]; 3]> = (0..joints).map(|j| rodrigues(pose.get(j).copied().unwrap_or([0.0; 3]))).collect();
        let mut feature = Vec::with_capacity(self.num_pose_correctives());
        for r in &rotations[1..] {
            for (row, values) in r.iter().enumerate() {
                for (col, &value) in values.iter().enumerate() {
                    feature.push(value - if row == col { 1.0 } else { 0.0 });
                }
            }
        }
        let mut v_posed = v_shaped;
        let p = feature.len();
        if feature.iter().any(|&f| f != 0.0) {
            for (row, v) in v_posed.iter_mut().enumerate() {
                let dirs = &self.posedirs[row * p..(row + 1) * p];
                *v += dirs.iter().zip(&feature).map(|(d, f)| d * f).sum::<f64>();
            }
        }

        // World transforms G_i = G_parent · [R_i | J_i − J_parent] as 3×4 matrices.
        let mut world: Vec<[[f64; 4]; 3]> = Vec::with_capacity(joints);
        for j in 0..joints {
            let translation = match self.parents[j] {
                Some(parent) => sub(joints_rest[j], joints_rest[parent]),
                None => joints_rest[j],
            };
            let local = affine(rotations[j], translation);
            world.push(match self.parents[j] {
                Some(parent) => compose(&world[parent], &local),
                None => local,
            });
        }
        let joints_posed: Vec<[f64; 3]> = world.iter().map(|g| [g[0][3], g[1][3], g[2][3]]).collect();
        // A_i = G_i · [I | −J_i]: the transform of a rest-pose point.
        let relative: Vec<[[f64; 4]; 3]> = world
            .iter()
            .zip(&joints_rest)
            .map(|(g, joint)| {
                let mut a = *g;
                for (row, values) in a.iter_mut().enumerate() {
                    values[3] -= g[row][0] * joint[0] + g[row][1] * joint[1] + g[row][2] * joint[2];
                }
                a
            })
            .collect();

        let vertices = (0..n)
            .map(|v| {
                let mut t = [[0.0; 4]; 3];
                for (j, a) in relative.iter().enumerate() {
                    let w = self.weights[v * joints + j];
                    if w != 0.0 {
                        for (row, values) in t.iter_mut().enumerate() {
                            for (col, value) in values.iter_mut().enumerate() {
                                *value += w * a[row][col];
                            }
                        }
                    }
                }
                let p = [v_posed[3 * v], v_posed[3 * v + 1], v_posed[3 * v + 2]];
                std::array::from_fn(|row| t[row][0] * p[0] + t[row][1] * p[1] + t[row][2] * p[2] + t[row][3])
            })
            .collect();
        Skinned { vertices, joints_rest, joints_posed }
    }
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn affine(r: [[f64; 3]; 3], t: [f64; 3]) -> [[f64; 4]; 3] {
    std::array::from_fn(|row| [r[row][0], r[row][1], r[row][2], t[row]])
}

/// a · b for 3×4 affine matrices (implicit last row 0 0 0 1).
fn compose(a: &[[f64; 4]; 3], b: &[[f64; 4]; 3]) -> [[f64; 4]; 3] {
    std::array::from_fn(|row| {
        std::array::from_fn(|col| {
            let mut value = a[row][0] * b[0][col] + a[row][1] * b[1][col] + a[row][2] * b[2][col];
            if col == 3 {
                value += a[row][3];
            }
            value
        })
    })
}

/// The rotation matrix of an axis-angle vector (identity below 1e-12 rad).
pub fn rodrigues(r: [f64; 3]) -> [[f64; 3]; 3] {
    let theta = (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt();
    if theta < 1e-12 {
        return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    }
    let k = [r[0] / theta, r[1] / theta, r[2] / theta];
    let (sin, cos) = theta.sin_cos();
    let kx = [[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]];
    std::array::from_fn(|i| {
        std::array::from_fn(|j| {
            let kk: f64 = (0..3).map(|m| kx[i][m] * kx[m][j]).sum();
            (if i == j { 1.0 } else { 0.0 }) + sin * kx[i][j] + (1.0 - cos) * kk
        })
    })
}

/// The joint regressor, dense (J, N), from a scipy `csc_matrix` or a plain array.
fn regressor(value: &Value, joints: usize, n: usize) -> Result<(Vec<f64>, usize), String> {
    let sparse = match value {
        Value::Object(object) => {
            let object = object.borrow();
            let (module, name) = (&object.class.0, &object.class.1);
            (name == "csc_matrix" && module.starts_with("scipy.sparse")).then(|| object.state.clone())
        }
        _ => None,
    };
    let Some(state) = sparse else {
        let dense = array(value).map_err(|e| format!("J_regressor: {e}"))?;
        if dense.shape != [joints, n] {
            return Err(format!("J_regressor has shape {:?}, expected ({joints}, {n})", dense.shape));
        }
        let nnz = dense.data.iter().filter(|&&v| v != 0.0).count();
        return Ok((dense.data, nnz));
    };
    let state = state.ok_or("J_regressor: csc_matrix without state")?;
    let field = |key: &str| -> Result<Array, String> {
        let value = state.get(key).ok_or_else(|| format!("J_regressor: csc_matrix without {key}"))?;
        array(&value).map_err(|e| format!("J_regressor.{key}: {e}"))
    };
    let (data, indices, indptr) = (field("data")?, field("indices")?, field("indptr")?);
    let shape: Vec<i64> = state
        .get("_shape")
        .or_else(|| state.get("shape"))
        .and_then(|s| s.items())
        .and_then(|items| items.iter().map(Value::as_int).collect())
        .ok_or("J_regressor: csc_matrix without a shape")?;
    if shape != [joints as i64, n as i64] {
        return Err(format!("J_regressor has shape {shape:?}, expected ({joints}, {n})"));
    }
    if indptr.data.len() != n + 1 || indices.data.len() != data.data.len() {
        return Err("J_regressor: inconsistent csc_matrix (indptr, indices and data lengths)".into());
    }
    let mut dense = vec![0.0; joints * n];
    for col in 0..n {
        let (start, end) = (indptr.data[col], indptr.data[col + 1]);
        if start < 0.0 || end < start || end > data.data.len() as f64 {
            return Err("J_regressor: csc_matrix indptr out of range".into());
        }
        for k in start as usize..end as usize {
            let row = indices.data[k];
            if row < 0.0 || row >= joints as f64 {
                return Err(format!("J_regressor: row {row} out of range"));
            }
            dense[row as usize * n + col] += data.data[k];
        }
    }
    Ok((dense, data.data.len()))
}

/// A numpy array (either pickling style) or a chumpy `Ch` holding one, as f64 in C order.
fn array(value: &Value) -> Result<Array, String> {
    let Value::Object(object) = value else {
        return Err(format!("a {} where an array was expected", value.describe()));
    };
    let object = object.borrow();
    let (module, name) = (object.class.0.as_str(), object.class.1.as_str());
    match (module, name) {
        ("chumpy.ch" | "chumpy", "Ch") => {
            let x = object.state.as_ref().and_then(|s| s.get("x")).ok_or("a chumpy Ch without its array 'x'")?;
            array(&x)
        }
        ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => {
            // State: (version, shape, dtype, is_fortran, raw bytes); numpy before 1.0 had no version.
            let state = object.state.as_ref().and_then(Value::items).ok_or("a numpy array without state")?;
            let state = match state.len() {
                5 => &state[1..],
                4 => &state[..],
                _ => return Err("a numpy array state of unexpected length".into()),
            };
            let shape = shape_of(&state[0])?;
            let dtype = dtype_of(&state[1])?;
            let fortran = matches!(state[2], Value::Bool(true) | Value::Int(1));
            let Value::Bytes(raw) = &state[3] else {
                return Err(format!("array data is a {} (object arrays are not supported)", state[3].describe()));
            };
            decode(raw, &dtype, shape, fortran)
        }
        ("numpy.core.numeric" | "numpy._core.numeric", "_frombuffer") => {
            // _frombuffer(buffer, dtype, shape, order)
            let [Value::Bytes(raw), dtype, shape, order] = object.args.as_slice() else {
                return Err("numpy _frombuffer with unexpected arguments".into());
            };
            let fortran = order.as_text().as_deref() == Some("F");
            decode(raw, &dtype_of(dtype)?, shape_of(shape)?, fortran)
        }
        _ => Err(format!("a {module}.{name} object where an array was expected")),
    }
}

fn shape_of(value: &Value) -> Result<Vec<usize>, String> {
    value
        .items()
        .and_then(|items| items.iter().map(|d| d.as_int().and_then(|d| usize::try_from(d).ok())).collect())
        .ok_or_else(|| format!("array shape is a {}", value.describe()))
}

/// A numpy dtype: kind ('f', 'i', 'u', 'b'), size in bytes and whether it is big-endian.
struct Dtype {
    kind: char,
    size: usize,
    big_endian: bool,
}

fn dtype_of(value: &Value) -> Result<Dtype, String> {
    let Value::Object(object) = value else {
        return Err(format!("array dtype is a {}", value.describe()));
    };
    let object = object.borrow();
    if object.class.1 != "dtype" {
        return Err(format!("array dtype is a {}.{}", object.class.0, object.class.1));
    }
    let descr = object.args.first().and_then(Value::as_text).ok_or("a numpy dtype without a type code")?;
    // The byte order is the state's second item ('<', '>', '|' or '='); a code may carry it too.
    let order = object.state.as_ref().and_then(Value::items).and_then(|s| s.get(1).and_then(Value::as_text));
    let mut chars = descr.chars().peekable();
    let mut big_endian = order.as_deref() == Some(">");
    if let Some(&c) = chars.peek()
        && matches!(c, '<' | '>' | '|' | '=')
    {
        big_endian = c == '>';
        chars.next();
    }
    let kind = chars.next().ok_or("an empty numpy dtype")?;
    let size: usize = chars.collect::<String>().parse().map_err(|_| format!("numpy dtype {descr:?} is not supported"))?;
    let ok = match kind {
        'f' => matches!(size, 4 | 8),
        'i' | 'u' => matches!(size, 1 | 2 | 4 | 8),
        'b' => size == 1,
        _ => false,
    };
    if !ok {
        return Err(format!("numpy dtype {descr:?} is not supported"));
    }
    Ok(Dtype { kind, size, big_endian })
}

fn decode(raw: &[u8], dtype: &Dtype, shape: Vec<usize>, fortran: bool) -> Result<Array, String> {
    let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or("array too large")?;
    if count.checked_mul(dtype.size) != Some(raw.len()) {
        return Err(format!("array of shape {shape:?} holds {} bytes, not {count} × {}", raw.len(), dtype.size));
    }
    let values: Vec<f64> = raw
        .chunks_exact(dtype.size)
        .map(|chunk| {
            let mut b = [0u8; 8];
            if dtype.big_endian {
                for (i, &c) in chunk.iter().rev().enumerate() {
                    b[i] = c;
                }
            } else {
                b[..dtype.size].copy_from_slice(chunk);
            }
            match (dtype.kind, dtype.size) {
                ('f', 4) => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
                ('f', _) => f64::from_le_bytes(b),
                ('i', size) => {
                    // Sign-extend from `size` bytes.
                    let shift = 64 - 8 * size as u32;
                    ((i64::from_le_bytes(b) << shift) >> shift) as f64
                }
                _ => u64::from_le_bytes(b) as f64,
            }
        })
        .collect();
    let data = if fortran && shape.len() > 1 { fortran_to_c(&values, &shape) } else { values };
    Ok(Array { shape, data })
}

/// Reorders column-major data into row-major.
fn fortran_to_c(values: &[f64], shape: &[usize]) -> Vec<f64> {
    let mut strides = vec![1usize; shape.len()];
    for d in 1..shape.len() {
        strides[d] = strides[d - 1] * shape[d - 1];
    }
    let mut index = vec![0usize; shape.len()];
    let mut out = Vec::with_capacity(values.len());
    for _ in 0..values.len() {
        out.push(values[index.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>()]);
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}
