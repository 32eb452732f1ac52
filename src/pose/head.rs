//! Head meshes: the built-in ICT-FaceKit head (assets/head/README.md) or a FLAME model file, in
//! one shape for the renderer and the pose fit — vertices in the head frame (see the module
//! docs of [`crate::pose`]), triangles, the five landmarks, overlay outlines and a jaw.
//!
//! The eye landmarks differ between the two: the built-in head's are the means of its eyelid
//! outlines (the eye-contour means FFHQ aligned on, near where SCRFD puts its eye keypoints),
//! while a FLAME file has no eyelid landmarks, so a FLAME head's are its eyeball centres, about
//! an eyeball radius further back.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::FLAME_JAW_MAX_RAD;
use super::flame::FlameModel;

/// The built-in head, compiled into the binary (255 KB).
const BUILTIN: &[u8] = include_bytes!("../../assets/head/ict_head.safetensors");

/// One landmark polyline for overlays: vertex indices in drawing order.
#[derive(Debug, Clone, PartialEq)]
pub struct Outline {
    /// `jaw`, `brow_left`, `brow_right`, `nose_bridge`, `nose_bottom`, `eye_left`, `eye_right`,
    /// `lips_outer`, `lips_inner` (left/right: image left/right).
    pub name: &'static str,
    pub vertices: Vec<u32>,
    /// Whether the last vertex joins the first (eyes, lips).
    pub closed: bool,
}

/// Where the five landmarks are on a FLAME-topology mesh.
#[derive(Debug, Clone, PartialEq)]
pub struct FlameLandmarks {
    /// The vertices of each eyeball, image-left eye (the person's right, −x) first; an eye's
    /// landmark is the mean of its eyeball's vertices (the eyeball centre).
    pub eyeballs: [Range<usize>; 2],
    pub nose_tip: usize,
    /// The two mouth corners, either order (they are sorted image-left first by x).
    pub mouth_corners: [usize; 2],
}

/// The landmarks of FLAME's own topology (5023 vertices; tools/FLAME_FORMAT.md §4): eyeballs
/// 4477–5022 (person's right) and 3931–4476, nose tip 3564, mouth corners 2845 and 1730.
pub fn flame_landmarks() -> FlameLandmarks {
    FlameLandmarks { eyeballs: [4477..5023, 3931..4477], nose_tip: 3564, mouth_corners: [2845, 1730] }
}

/// FLAME's vertex count, for which [`flame_landmarks`] holds.
pub const FLAME_VERTICES: usize = 5023;

#[derive(Debug, Clone)]
struct Landmarks {
    /// Each eye's landmark is the mean of these vertices of the posed mesh, image-left eye first:
    /// the eyelid outline on the built-in head, the eyeball on a FLAME head.
    eyes: [Vec<usize>; 2],
    nose_tip: usize,
    mouth: [usize; 2],
}

#[derive(Debug, Clone)]
enum Rig {
    /// Vertices + jaw · offsets.
    Blendshape { jaw_open: Vec<[f32; 3]> },
    /// FLAME's skinning; `origin` (file frame) is subtracted to put the eyeballs' midpoint at 0.
    Flame { model: Box<FlameModel>, origin: [f64; 3] },
}

/// A head mesh that can be posed (jaw, expression) and rendered.
#[derive(Clone)]
pub struct HeadModel {
    source: &'static str,
    /// Neutral vertices, head frame.
    vertices: Vec<[f32; 3]>,
    triangles: Arc<[[u32; 3]]>,
    landmarks: Landmarks,
    outlines: Vec<Outline>,
    rig: Rig,
}

/// Its source and sizes (the mesh itself is too long to print).
impl std::fmt::Debug for HeadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadModel")
            .field("source", &self.source)
            .field("vertices", &self.vertices.len())
            .field("triangles", &self.triangles.len())
            .finish_non_exhaustive()
    }
}

/// A head mesh in one jaw/expression state, head frame, with what rendering needs.
#[derive(Debug, Clone)]
pub struct PosedHead {
    pub vertices: Vec<[f32; 3]>,
    /// Per-vertex normals: the normalised sum of the adjacent triangles' un-normalised cross
    /// products (area-weighted), of this posed mesh.
    pub normals: Vec<[f32; 3]>,
    pub triangles: Arc<[[u32; 3]]>,
    /// Image-left eye, image-right eye (see the module docs for which point), nose tip,
    /// image-left and image-right mouth corner (insightface/SCRFD order).
    pub landmarks: [[f32; 3]; 5],
}

impl HeadModel {
    /// The built-in ICT-FaceKit head (MIT; assets/head/README.md).
    pub fn builtin() -> Result<HeadModel, String> {
        parse_builtin(BUILTIN).map_err(|e| format!("built-in head mesh: {e}"))
    }

    /// A FLAME model file (FLAME 2020 `generic_model.pkl`, FLAME 2023 `flame2023.pkl`, …) with
    /// FLAME's own landmark vertices; only for files with FLAME's 5023 vertices.
    pub fn from_flame_file(path: &Path) -> Result<HeadModel, String> {
        let model = FlameModel::read(path)?;
        if model.num_vertices() != FLAME_VERTICES {
            return Err(format!(
                "{}: a model with {} vertices, not FLAME's {FLAME_VERTICES}: its landmark vertices are unknown",
                crate::file_name(path),
                model.num_vertices()
            ));
        }
        Self::from_flame(model, &flame_landmarks()).map_err(|e| format!("{}: {e}", crate::file_name(path)))
    }

    /// A head from a FLAME-layout model with the given landmark vertices (any topology).
    pub fn from_flame(model: FlameModel, landmarks: &FlameLandmarks) -> Result<HeadModel, String> {
        let n = model.num_vertices();
        let in_range = |i: usize| i < n;
        if landmarks.eyeballs.iter().any(|r| r.is_empty() || r.end > n)
            || !in_range(landmarks.nose_tip)
            || !landmarks.mouth_corners.iter().all(|&i| in_range(i))
        {
            return Err(format!("landmark vertices {landmarks:?} outside the model's {n} vertices"));
        }
        let template: Vec<[f64; 3]> = model.template().chunks_exact(3).map(|v| [v[0], v[1], v[2]]).collect();
        let mean = |range: &Range<usize>| -> [f64; 3] {
            let count = range.len() as f64;
            let sum = template[range.clone()].iter().fold([0.0; 3], |acc, v| [acc[0] + v[0], acc[1] + v[1], acc[2] + v[2]]);
            sum.map(|s| s / count)
        };
        let (left, right) = (mean(&landmarks.eyeballs[0]), mean(&landmarks.eyeballs[1]));
        let origin = [(left[0] + right[0]) / 2.0, (left[1] + right[1]) / 2.0, (left[2] + right[2]) / 2.0];
        let vertices = template.iter().map(|v| [(v[0] - origin[0]) as f32, (v[1] - origin[1]) as f32, (v[2] - origin[2]) as f32]).collect();
        let mut mouth = landmarks.mouth_corners;
        if template[mouth[0]][0] > template[mouth[1]][0] {
            mouth.swap(0, 1);
        }
        let [left_eyeball, right_eyeball] = landmarks.eyeballs.clone().map(|range| range.collect::<Vec<usize>>());
        let eyes = if left[0] <= right[0] { [left_eyeball, right_eyeball] } else { [right_eyeball, left_eyeball] };
        Ok(HeadModel {
            source: "FLAME",
            vertices,
            triangles: model.faces().into(),
            landmarks: Landmarks { eyes, nose_tip: landmarks.nose_tip, mouth },
            outlines: Vec::new(),
            rig: Rig::Flame { model: Box::new(model), origin },
        })
    }

    /// "ICT-FaceKit (built in)" or "FLAME".
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// Neutral vertices (jaw closed), head frame.
    pub fn vertices(&self) -> &[[f32; 3]] {
        &self.vertices
    }

    pub fn triangles(&self) -> &[[u32; 3]] {
        &self.triangles
    }

    /// Landmark polylines for overlays (the built-in head has them; FLAME files do not).
    pub fn outlines(&self) -> &[Outline] {
        &self.outlines
    }

    /// The FLAME model behind this head, if it came from a FLAME file.
    pub fn flame(&self) -> Option<&FlameModel> {
        match &self.rig {
            Rig::Flame { model, .. } => Some(model),
            Rig::Blendshape { .. } => None,
        }
    }

    /// The mesh with the mouth opened by `jaw` (0 closed … 1 fully open) and, for FLAME, the
    /// first (at most 100) `expression` coefficients applied; the ICT head has no expressions.
    pub fn posed(&self, jaw: f64, expression: &[f32]) -> PosedHead {
        let vertices: Vec<[f32; 3]> = match &self.rig {
            Rig::Blendshape { jaw_open } => {
                let jaw = jaw as f32;
                self.vertices.iter().zip(jaw_open).map(|(v, d)| [v[0] + jaw * d[0], v[1] + jaw * d[1], v[2] + jaw * d[2]]).collect()
            }
            Rig::Flame { model, origin } => {
                let expression: Vec<f64> = expression.iter().take(100).map(|&e| e as f64).collect();
                let mut pose = vec![[0.0; 3]; model.num_joints()];
                if let Some(joint) = pose.get_mut(2) {
                    *joint = [jaw * FLAME_JAW_MAX_RAD, 0.0, 0.0];
                }
                let skinned = model.lbs(&[], &expression, &pose);
                skinned.vertices.iter().map(|v| [(v[0] - origin[0]) as f32, (v[1] - origin[1]) as f32, (v[2] - origin[2]) as f32]).collect()
            }
        };
        let normals = vertex_normals(&vertices, &self.triangles);
        let l = &self.landmarks;
        let landmarks = [
            mean_position(&vertices, &l.eyes[0]),
            mean_position(&vertices, &l.eyes[1]),
            vertices[l.nose_tip],
            vertices[l.mouth[0]],
            vertices[l.mouth[1]],
        ];
        PosedHead { vertices, normals, triangles: self.triangles.clone(), landmarks }
    }
}

/// Per-vertex normals: the normalised sum of the adjacent triangles' cross products.
fn vertex_normals(vertices: &[[f32; 3]], triangles: &[[u32; 3]]) -> Vec<[f32; 3]> {
    let mut sums = vec![[0.0f32; 3]; vertices.len()];
    for t in triangles {
        let [a, b, c] = t.map(|i| vertices[i as usize]);
        let (u, v) = ([b[0] - a[0], b[1] - a[1], b[2] - a[2]], [c[0] - a[0], c[1] - a[1], c[2] - a[2]]);
        let n = [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]];
        for &i in t {
            let s = &mut sums[i as usize];
            s[0] += n[0];
            s[1] += n[1];
            s[2] += n[2];
        }
    }
    for s in &mut sums {
        let length = (s[0] * s[0] + s[1] * s[1] + s[2] * s[2]).sqrt();
        if length > 0.0 {
            *s = s.map(|c| c / length);
        }
    }
    sums
}

/// The mean position of the vertices `ids` (each eye's landmark).
fn mean_position(vertices: &[[f32; 3]], ids: &[usize]) -> [f32; 3] {
    let count = ids.len() as f32;
    ids.iter().fold([0.0; 3], |acc, &i| {
        let v = vertices[i];
        [acc[0] + v[0] / count, acc[1] + v[1] / count, acc[2] + v[2] / count]
    })
}

fn parse_builtin(bytes: &[u8]) -> Result<HeadModel, String> {
    let tensors =
        candle_core::safetensors::load_buffer(bytes, &Device::Cpu).map_err(|e| format!("not a readable safetensors file: {e}"))?;
    let get = |name: &str, dtype: DType, rank: usize| -> Result<&Tensor, String> {
        let t = tensors.get(name).ok_or_else(|| format!("no tensor {name}"))?;
        if t.dtype() != dtype || t.rank() != rank {
            return Err(format!("tensor {name}: {} {:?}, expected {} of rank {rank}", t.dtype().as_str(), t.dims(), dtype.as_str()));
        }
        Ok(t)
    };
    // An (N, 3) tensor; `rows` fixes N.
    let rows3 = |name: &str, dtype: DType, rows: Option<usize>| -> Result<&Tensor, String> {
        let t = get(name, dtype, 2)?;
        if t.dims()[1] != 3 || rows.is_some_and(|r| r != t.dims()[0]) {
            return Err(format!("tensor {name}: shape {:?}", t.dims()));
        }
        Ok(t)
    };
    let points = |name: &str, rows: Option<usize>| -> Result<Vec<[f32; 3]>, String> {
        let rows = rows3(name, DType::F32, rows)?.to_vec2::<f32>().map_err(|e| format!("tensor {name}: {e}"))?;
        Ok(rows.iter().map(|r| [r[0], r[1], r[2]]).collect())
    };
    let vertices = points("vertices", None)?;
    let n = vertices.len();
    let jaw_open = points("jaw_open", Some(n))?;
    let eye_centers = points("eye_centers", Some(2))?;
    let triangles = rows3("triangles", DType::I32, None)?.to_vec2::<i32>().map_err(|e| format!("tensor triangles: {e}"))?;
    if triangles.iter().flatten().any(|&i| i < 0 || i as usize >= n) {
        return Err("tensor triangles: a vertex index out of range".into());
    }
    let triangles: Arc<[[u32; 3]]> = triangles.iter().map(|t| [t[0] as u32, t[1] as u32, t[2] as u32]).collect();
    let indices = |name: &str| -> Result<Vec<u32>, String> {
        get(name, DType::I64, 1)?
            .to_vec1::<i64>()
            .map_err(|e| format!("tensor {name}: {e}"))?
            .into_iter()
            .map(|i| u32::try_from(i).ok().filter(|&i| (i as usize) < n).ok_or_else(|| format!("tensor {name}: vertex {i} out of range")))
            .collect()
    };
    let five = indices("landmarks5")?;
    let [_, _, nose_tip, mouth_a, mouth_b] = five[..] else {
        return Err(format!("tensor landmarks5 has {} entries, not 5", five.len()));
    };
    let mut mouth = [mouth_a as usize, mouth_b as usize];
    if vertices[mouth[0]][0] > vertices[mouth[1]][0] {
        mouth.swap(0, 1);
    }
    // The head frame's origin is the eyeballs' midpoint (the file is already centred so; this
    // keeps it exact).
    let origin: [f32; 3] = std::array::from_fn(|c| (eye_centers[0][c] + eye_centers[1][c]) / 2.0);
    let shift = |v: &[f32; 3]| [v[0] - origin[0], v[1] - origin[1], v[2] - origin[2]];
    let eyelid = |name: &str| -> Result<Vec<usize>, String> {
        let outline: Vec<usize> = indices(name)?.into_iter().map(|i| i as usize).collect();
        if outline.is_empty() {
            return Err(format!("tensor {name} is empty"));
        }
        Ok(outline)
    };
    let mut eyes = [eyelid("outline_eye_left")?, eyelid("outline_eye_right")?];
    if mean_position(&vertices, &eyes[0])[0] > mean_position(&vertices, &eyes[1])[0] {
        eyes.swap(0, 1);
    }
    let mut outlines = Vec::new();
    for (name, closed) in [
        ("jaw", false),
        ("brow_left", false),
        ("brow_right", false),
        ("nose_bridge", false),
        ("nose_bottom", false),
        ("eye_left", true),
        ("eye_right", true),
        ("lips_outer", true),
        ("lips_inner", true),
    ] {
        outlines.push(Outline { name, vertices: indices(&format!("outline_{name}"))?, closed });
    }
    Ok(HeadModel {
        source: "ICT-FaceKit (built in)",
        vertices: vertices.iter().map(shift).collect(),
        triangles,
        landmarks: Landmarks { eyes, nose_tip: nose_tip as usize, mouth },
        outlines,
        rig: Rig::Blendshape { jaw_open },
    })
}
