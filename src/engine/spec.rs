//! One description of a generation: every setting that decides its pixels, as plain data.
//!
//! The GUI's queue holds it, the worker and the engine run it, each PNG's metadata is written
//! from it and restoring an image reads it back, and the CLI builds it from its flags. A new
//! setting is a field here (with its default) plus the widget or flag that edits it; everything
//! in between passes the whole value along. Old files without the new field still load: every
//! field has a serde default.
//!
//! The identity vector itself is never part of it (it is biometric data); `identity` only says
//! where it came from.

use serde::{Deserialize, Serialize};

use super::runtime::RuntimeSpec;
use crate::diffusion::schedulers::Sampler;
use crate::expression::Expression;
use crate::models;
use crate::pose::HeadPose;

/// The version of [`ImageMetadata`]'s layout; version 1 (app 0.1.0) was flat, without `spec`.
pub const METADATA_FORMAT: u32 = 2;

/// Everything that decides a job's images, except the identity vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationSpec {
    /// Where the identity came from (file names and face numbers), never the vector.
    pub identity: IdentitySource,
    pub num_images: usize,
    /// Image i starts from `torch.randn` seeded with `seed + i`; `None` when the initial noise
    /// was given as latents (the CLI's `--noise`).
    pub seed: Option<u64>,
    pub steps: usize,
    /// Classifier-free guidance; ≤ 1 runs the conditional half only.
    pub guidance: f64,
    /// Image side in pixels; `None` is the size the model was trained at (512 for Arc2Face).
    pub size: Option<usize>,
    pub sampler: Sampler,
    /// LoRAs merged into the UNet, in order.
    pub loras: Vec<LoraSpec>,
    /// A target head pose through the pose ControlNet.
    pub pose: Option<PoseSpec>,
    /// A target expression through the Expression Adapter.
    pub expression: Option<ExpressionSpec>,
    /// Keep a photo's look through the Reference Adapter.
    pub reference: Option<ReferenceSpec>,
    /// One seed across the images, the pose or the expression going from the sweep's start to
    /// the spec's own.
    pub sweep: Option<Sweep>,
    /// Where the job runs and in which precision. Recorded with each image; restoring an image
    /// never changes it (see [`GenerationSpec::restored`]).
    pub runtime: RuntimeSpec,
}

impl Default for GenerationSpec {
    fn default() -> Self {
        Self {
            identity: IdentitySource::default(),
            num_images: 4,
            seed: None,
            steps: 25,
            guidance: 3.0,
            size: None,
            sampler: Sampler::default(),
            loras: Vec::new(),
            pose: None,
            expression: None,
            reference: None,
            sweep: None,
            runtime: RuntimeSpec::default(),
        }
    }
}

impl GenerationSpec {
    /// The settings of image `index` of this job on their own: one image, its own seed (the
    /// job's seed for every image of a sweep, and its place on the sweep). Each image's metadata
    /// holds this, so that restoring it makes that very image again.
    pub fn image(&self, index: usize) -> GenerationSpec {
        let mut image = GenerationSpec { num_images: 1, sweep: None, ..self.clone() };
        let t = if self.num_images > 1 { index as f32 / (self.num_images - 1) as f32 } else { 1.0 };
        match &self.sweep {
            None => image.seed = self.seed.map(|seed| seed.wrapping_add(index as u64)),
            Some(Sweep::Expression { from }) => {
                if let Some(target) = &mut image.expression {
                    target.expression = from.lerp(&target.expression, t);
                }
            }
            Some(Sweep::Pose { from }) => {
                if let Some(PoseSpec { target: PoseTarget::Head { pose, .. }, .. }) = &mut image.pose {
                    *pose = from.lerp(pose, t as f64);
                }
            }
        }
        image
    }

    /// Fast mode: the models folder's LCM-LoRA, the LCM sampler, 4 steps and no guidance (LCM
    /// oversaturates with even a little of it); other LoRAs stay.
    pub fn in_fast_mode(&self) -> GenerationSpec {
        let lcm = LoraSpec { file: models::LCM_LORA.relative_path.into(), scale: 1.0 };
        let loras = std::iter::once(lcm).chain(self.loras.iter().filter(|l| l.file != models::LCM_LORA.relative_path).cloned()).collect();
        GenerationSpec { sampler: Sampler::Lcm, steps: 4, guidance: 1.0, loras, ..self.clone() }
    }

    /// Whether the spec is in fast mode (the LCM sampler with the LCM-LoRA).
    pub fn is_fast(&self) -> bool {
        self.sampler == Sampler::Lcm && self.loras.iter().any(|l| l.file == models::LCM_LORA.relative_path)
    }

    /// This spec restored from an image's metadata, keeping `runtime` (where this machine runs
    /// is not a property of the image).
    pub fn restored(from: &GenerationSpec, runtime: RuntimeSpec) -> GenerationSpec {
        GenerationSpec { runtime, ..from.clone() }
    }
}

/// What each generated image records about itself: its own settings, where it stood in its job,
/// and what it was made with. PNGs carry it (the `arc2face` chunk) and restoring reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageMetadata {
    pub format: u32,
    pub app: String,
    pub app_version: String,
    /// This image's own settings ([`GenerationSpec::image`]): they make it again.
    pub spec: GenerationSpec,
    /// Which image of its job it was, from 0, and how many the job made.
    pub index: usize,
    pub count: usize,
    /// The job it came from (a random number, the same for all of its images).
    #[serde(default)]
    pub job: u64,
    /// The job's sweep, when the job was one: its images belong together, in `index` order.
    #[serde(default)]
    pub sweep: Option<Sweep>,
    pub width: usize,
    pub height: usize,
    /// What it ran on, as [`super::Runtime::describe`] says it: "CPU, f32".
    pub ran_on: String,
    /// Every model file the job read, with its size.
    pub model_files: Vec<LoadedFile>,
    /// When it was made (Unix milliseconds; 0 when unknown).
    #[serde(default)]
    pub created_unix_ms: u64,
    /// How well it keeps the identity: the cosine between the identity and the largest face
    /// found in it, when one was found.
    #[serde(default)]
    pub identity_match: Option<f32>,
}

/// A model file a pipeline read, relative to the models folder, and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedFile {
    pub path: String,
    pub bytes: u64,
}

/// A LoRA file and the scale it is merged at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    /// A path relative to the models folder (the LCM-LoRA of fast mode), or absolute.
    pub file: String,
    pub scale: f64,
}

/// A target pose: what the pose ControlNet is shown, and how much it steers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PoseSpec {
    pub target: PoseTarget,
    /// The ControlNet's residuals are multiplied by this.
    pub controlnet_scale: f64,
    /// The fractions of the steps between which the ControlNet runs (diffusers'
    /// `control_guidance_start` / `_end`).
    pub control_start: f64,
    pub control_end: f64,
}

impl Default for PoseSpec {
    fn default() -> Self {
        Self {
            target: PoseTarget::Head { pose: HeadPose::FRONTAL, mesh: HeadMesh::Builtin },
            controlnet_scale: 1.0,
            control_start: 0.0,
            control_end: 1.0,
        }
    }
}

impl PoseSpec {
    /// Whether the ControlNet runs at step `step` of `steps`, as diffusers decides it.
    pub fn active_at(&self, step: usize, steps: usize) -> bool {
        let (start, end) = (step as f64 / steps as f64, (step + 1) as f64 / steps as f64);
        !(start < self.control_start || end > self.control_end)
    }

    /// The head's pose, when the target is a head.
    pub fn head_pose(&self) -> Option<HeadPose> {
        match &self.target {
            PoseTarget::Head { pose, .. } => Some(*pose),
            PoseTarget::Image { .. } => None,
        }
    }

    /// The degrees the finished image is turned by (a head's roll; a given image has none).
    pub fn roll(&self) -> f64 {
        self.head_pose().map_or(0.0, |pose| pose.clamped().roll)
    }
}

/// A target expression and how much the Expression Adapter's attention counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExpressionSpec {
    pub expression: Expression,
    pub scale: f64,
}

impl Default for ExpressionSpec {
    fn default() -> Self {
        Self { expression: Expression::default(), scale: 1.0 }
    }
}

/// The photo whose look the images keep (background, light, clothes), and how much the
/// Reference Adapter's LoRA counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReferenceSpec {
    /// The photo's file name (the aligned pixels travel with the job).
    pub photo: String,
    /// The face it was aligned on, as `arc2face faces` numbers them; `None` when the file was
    /// already an aligned crop.
    pub face: Option<usize>,
    /// The LoRA's scale, 0 to 1: lower keeps the expression truer, higher the photo's
    /// background and pose. The photo's attention counts fully at any scale.
    pub scale: f64,
}

impl ReferenceSpec {
    pub const DEFAULT_SCALE: f64 = 0.8;
}

impl Default for ReferenceSpec {
    fn default() -> Self {
        Self { photo: String::new(), face: None, scale: Self::DEFAULT_SCALE }
    }
}

/// What a sweep varies from image to image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sweep {
    /// From this expression to the spec's.
    Expression { from: Expression },
    /// From this head pose to the spec's.
    Pose { from: HeadPose },
}

/// What the pose ControlNet is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoseTarget {
    /// A head in this pose, rendered as a normal map at the image size (roll turns the finished
    /// image instead: see [`crate::pose`]).
    Head {
        pose: HeadPose,
        #[serde(default)]
        mesh: HeadMesh,
    },
    /// A conditioning image given as it is (its file name; the pixels travel with the job).
    Image { file: String },
}

/// The head mesh a pose is rendered with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HeadMesh {
    /// The ICT-FaceKit head compiled into the app.
    #[default]
    Builtin,
    /// A FLAME model file in the models folder (its path relative to the folder).
    Flame { file: String },
}

impl HeadMesh {
    /// The mesh closest to the ControlNet's training renders that `models` has: a FLAME model
    /// file when there is one, else the built-in head.
    pub fn preferred(models: &models::ModelsDir) -> HeadMesh {
        match models.flame_model() {
            Some(file) => HeadMesh::Flame { file: file.into() },
            None => HeadMesh::Builtin,
        }
    }
}

/// Where a job's identity came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IdentitySource {
    /// Faces of photos, averaged when there are several.
    Faces { faces: Vec<FaceRef> },
    /// A raw ArcFace vector from a `.npy` file.
    Embedding { file: String },
    #[default]
    Unknown,
}

/// One face of one photo: the photo's file name (not its folder) and the face's number as
/// `arc2face faces` lists them, from 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaceRef {
    pub photo: String,
    pub face: usize,
}

impl std::fmt::Display for IdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdentitySource::Faces { faces } => {
                let names: Vec<String> = faces.iter().map(|r| format!("{} (face {})", r.photo, r.face)).collect();
                f.write_str(&names.join(", "))
            }
            IdentitySource::Embedding { file } => f.write_str(file),
            IdentitySource::Unknown => f.write_str("unknown"),
        }
    }
}

impl IdentitySource {
    /// Reads the one-line form older versions wrote: `photo.jpg (face 0), other.png (face 2)`
    /// for faces, anything else for an embedding file.
    pub fn from_legacy_text(text: &str) -> IdentitySource {
        const MARK: &str = " (face ";
        // The first " (face N)" that ends the text or is followed by ", ": file names may
        // themselves hold ", " or parentheses.
        let next_face = |rest: &str| -> Option<(FaceRef, usize)> {
            rest.match_indices(MARK).find_map(|(at, _)| {
                let after = &rest[at + MARK.len()..];
                let digits = after.find(')')?;
                let face = after[..digits].parse().ok()?;
                let end = at + MARK.len() + digits + 1;
                let tail = &rest[end..];
                (tail.is_empty() || tail.starts_with(", ")).then(|| (FaceRef { photo: rest[..at].to_string(), face }, end))
            })
        };
        let mut faces = Vec::new();
        let mut rest = text;
        while let Some((face, end)) = next_face(rest) {
            faces.push(face);
            rest = rest[end..].strip_prefix(", ").unwrap_or(&rest[end..]);
        }
        match (text.is_empty(), faces.is_empty() || !rest.is_empty()) {
            (true, _) => IdentitySource::Unknown,
            (false, false) => IdentitySource::Faces { faces },
            (false, true) => IdentitySource::Embedding { file: text.to_string() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_identity_text_parses_back_into_faces() {
        let text = "astronaut.jpg (face 1), two, faces (2).jpg (face 0)";
        let IdentitySource::Faces { faces } = IdentitySource::from_legacy_text(text) else { panic!("faces expected") };
        assert_eq!(faces, [FaceRef { photo: "astronaut.jpg".into(), face: 1 }, FaceRef { photo: "two, faces (2).jpg".into(), face: 0 }]);
        assert_eq!(IdentitySource::Faces { faces }.to_string(), text);
        assert_eq!(IdentitySource::from_legacy_text("id.npy"), IdentitySource::Embedding { file: "id.npy".into() });
        assert_eq!(IdentitySource::from_legacy_text(""), IdentitySource::Unknown);
    }

    #[test]
    fn an_image_of_a_batch_has_its_own_seed() {
        let spec = GenerationSpec { seed: Some(41), num_images: 3, ..Default::default() };
        assert_eq!(spec.image(2).seed, Some(43));
        assert_eq!(spec.image(2).num_images, 1);
        let empty: GenerationSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, GenerationSpec::default(), "every field has a default");
    }
}
