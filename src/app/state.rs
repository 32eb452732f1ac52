//! The app's state as plain data: what the panels read and what actions change.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Instant;

use egui::TextureHandle;
use serde::{Deserialize, Serialize};

use super::models_task::ModelsState;
use super::pose_view::{Head, PoseDrawing};
use crate::engine::{ExpressionSpec, FaceRef, GenerationSpec, PoseSpec, ReferenceSpec, Sweep};
use crate::expression::Expression;
use crate::face::Face;
use crate::gallery::history::{GalleryEntry, Removed, SortOrder};
use crate::pose::HeadPose;
use crate::worker::GenerationRequest;

/// What persists across runs (eframe storage). Every field has a default, so a settings file
/// from an older version never breaks start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The next job's settings; Generate fills in the identity (and a new seed unless locked).
    /// Its pose and expression are kept while switched off (`use_pose`, `use_expression`).
    pub spec: GenerationSpec,
    /// Whether the next job has the pose / the expression set in the panels.
    pub use_pose: bool,
    pub use_expression: bool,
    /// Whether the next job keeps the photo's look (the Reference Adapter on the selected face's
    /// photo).
    pub use_reference: bool,
    /// One slider moves both eyelids.
    pub eyelids_linked: bool,
    /// Keep the seed for the next generation instead of drawing a new one.
    pub seed_locked: bool,
    pub models_dir: Option<PathBuf>,
    pub recent_photos: Vec<PathBuf>,
    /// What fast mode replaced, restored when it is switched off.
    pub before_fast: Option<GenerationSpec>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            spec: GenerationSpec {
                seed: Some(0),
                pose: Some(PoseSpec::default()),
                expression: Some(ExpressionSpec::default()),
                reference: Some(ReferenceSpec::default()),
                ..Default::default()
            },
            use_pose: false,
            use_expression: false,
            use_reference: false,
            eyelids_linked: true,
            seed_locked: false,
            models_dir: None,
            recent_photos: Vec::new(),
            before_fast: None,
        }
    }
}

impl Settings {
    /// The spec of the next job: the pose and expression only when switched on.
    pub fn job_spec(&self) -> GenerationSpec {
        let mut spec = self.spec.clone();
        if !self.use_pose {
            spec.pose = None;
        }
        if !self.use_expression {
            spec.expression = None;
        }
        if !self.use_reference {
            spec.reference = None;
        }
        spec
    }

    /// Takes `spec` (from an image) as the next job's settings, keeping where jobs run, and the
    /// panels' pose and expression when it has none.
    pub fn restore(&mut self, spec: &GenerationSpec) {
        let restored = GenerationSpec::restored(spec, self.spec.runtime);
        self.use_pose = restored.pose.is_some();
        self.use_expression = restored.expression.is_some();
        self.use_reference = restored.reference.is_some();
        self.seed_locked = restored.seed.is_some();
        self.spec = GenerationSpec {
            seed: restored.seed.or(self.spec.seed),
            pose: restored.pose.clone().or(self.spec.pose.clone()),
            expression: restored.expression.clone().or(self.spec.expression.clone()),
            reference: restored.reference.clone().or(self.spec.reference.clone()),
            ..restored
        };
    }

    /// Switches fast mode on (sampler, LCM-LoRA, steps and guidance together) or off (back to
    /// what they were, keeping every other change).
    pub fn set_fast(&mut self, on: bool) {
        if on {
            self.before_fast = Some(self.spec.clone());
            self.spec = self.spec.in_fast_mode();
        } else {
            let before = self.before_fast.take().unwrap_or_default();
            let lcm = crate::models::LCM_LORA.relative_path;
            self.spec.loras.retain(|l| l.file != lcm);
            self.spec = GenerationSpec { sampler: before.sampler, steps: before.steps, guidance: before.guidance, ..self.spec.clone() };
        }
    }
}

pub const MAX_RECENT_PHOTOS: usize = 8;

/// What a sweep varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepKind {
    Pose,
    Expression,
}

/// Where the next sweep of each kind starts (it ends at the panels' current value).
#[derive(Debug, Clone, Default)]
pub struct SweepStarts {
    /// Frontal when not set.
    pub pose: Option<HeadPose>,
    /// Neutral when not set.
    pub expression: Option<Expression>,
}

impl SweepStarts {
    /// Remembers the spec's current value of `kind` as a sweep's start.
    pub fn set(&mut self, kind: SweepKind, spec: &GenerationSpec) {
        match kind {
            SweepKind::Pose => self.pose = spec.pose.as_ref().and_then(PoseSpec::head_pose),
            SweepKind::Expression => self.expression = spec.expression.as_ref().map(|e| e.expression.clone()),
        }
    }

    /// The sweep of `kind` from its start.
    pub fn sweep(&self, kind: SweepKind) -> Sweep {
        match kind {
            SweepKind::Pose => Sweep::Pose { from: self.pose.unwrap_or_default() },
            SweepKind::Expression => Sweep::Expression { from: self.expression.clone().unwrap_or_default() },
        }
    }
}

/// The values the Pose and Expression panels edit, as one step of Undo takes them back.
#[derive(Debug, Clone, PartialEq)]
pub struct PanelValues {
    pub pose: Option<PoseSpec>,
    pub expression: Option<ExpressionSpec>,
    pub use_pose: bool,
    pub use_expression: bool,
}

impl PanelValues {
    pub fn of(settings: &Settings) -> Self {
        PanelValues {
            pose: settings.spec.pose.clone(),
            expression: settings.spec.expression.clone(),
            use_pose: settings.use_pose,
            use_expression: settings.use_expression,
        }
    }

    pub fn restore_into(self, settings: &mut Settings) {
        settings.spec.pose = self.pose;
        settings.spec.expression = self.expression;
        settings.use_pose = self.use_pose;
        settings.use_expression = self.use_expression;
    }
}

/// One step Ctrl+Z takes back, newest last.
#[derive(Debug, Clone)]
pub enum UndoStep {
    /// The pose and expression as they were before an edit.
    Edit(Box<PanelValues>),
    /// Images moved to the trash (the gallery keeps what it needs to bring them back).
    Delete,
}

/// How many steps Undo keeps.
pub const UNDO_STEPS: usize = 100;

/// The Pose panel's head and what is drawn of it.
#[derive(Default)]
pub struct PoseState {
    /// The head the panel shows and jobs render; `None` until it is loaded.
    pub head: Option<Head>,
    /// The head being loaded (after start and whenever the models folder changes).
    pub loading: Option<crossbeam_channel::Receiver<(Head, Option<String>)>>,
    pub drawing: Option<PoseDrawing>,
    /// A photo dropped on the Pose panel, being analysed for its pose.
    pub fitting: Option<PathBuf>,
    /// The pose thumbnail of each queued job that has one, by job id.
    pub queue_thumbnails: HashMap<u64, TextureHandle>,
}

/// The photo being worked on.
pub struct PhotoState {
    pub path: PathBuf,
    pub texture: TextureHandle,
    pub size: [usize; 2],
    pub faces: Vec<Face>,
    /// A picture of each face, in the order of `faces`.
    pub face_crops: Vec<TextureHandle>,
    /// Indices into `faces`, largest face first: the order the face strip shows them in.
    pub by_size: Vec<usize>,
    pub selected_face: Option<usize>,
}

/// A face kept for the identity while further photos of the same person are opened; the
/// identity generated is the mean of the kept faces and the face selected now.
pub struct KeptFace {
    pub face: FaceRef,
    pub embedding: Vec<f32>,
}

/// The job the worker is running.
pub struct RunningJob {
    pub request: GenerationRequest,
    pub started: Instant,
    pub image_index: usize,
    pub step: usize,
    pub steps: usize,
    /// Steps finished over the whole job, for it/s and the ETA.
    pub steps_done: usize,
    pub preview: Option<TextureHandle>,
    pub cancelling: bool,
}

impl RunningJob {
    pub fn iterations_per_second(&self) -> f64 {
        self.steps_done as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }

    pub fn seconds_left(&self) -> Option<f64> {
        let total = self.request.spec.num_images * self.request.spec.steps;
        let rate = self.iterations_per_second();
        (self.steps_done > 0 && rate > 0.0).then(|| (total - self.steps_done) as f64 / rate)
    }
}

/// A message to the user; errors stay until dismissed.
pub struct Notice {
    pub text: String,
    pub is_error: bool,
}

/// The gallery as the UI sees it: a copy of the entries the gallery thread keeps, and what the
/// user has selected and opened.
pub struct GalleryState {
    /// Where the gallery lives; `None` until the gallery thread has opened it.
    pub dir: Option<PathBuf>,
    /// All entries in insertion order, as the gallery thread last reported them.
    pub entries: Vec<GalleryEntry>,
    pub selection: BTreeSet<u64>,
    /// The entry shift-click extends a selection from.
    pub anchor: Option<u64>,
    pub sort: SortOrder,
    /// Downscaled images for the strip.
    pub thumbnails: HashMap<u64, TextureHandle>,
    /// Full-size images of the entries opened large, the most recently used last; a few at most.
    pub full_size: Vec<(u64, TextureHandle)>,
    pub last_removed: Option<Removed>,
    /// Shown large in the central panel when set.
    pub opened: Option<u64>,
    /// Two entries side by side.
    pub comparing: Option<(u64, u64)>,
    /// A finished job asked for its newest image to be opened once the gallery has it.
    pub open_newest: bool,
}

impl GalleryState {
    pub fn get(&self, id: u64) -> Option<&GalleryEntry> {
        self.entries.binary_search_by_key(&id, |e| e.id).ok().map(|i| &self.entries[i])
    }

    pub fn sorted(&self) -> Vec<&GalleryEntry> {
        crate::gallery::history::sorted(&self.entries, self.sort)
    }

    /// The full-size texture of `id`, if loaded.
    pub fn full_size(&self, id: u64) -> Option<&TextureHandle> {
        self.full_size.iter().find(|(entry, _)| *entry == id).map(|(_, texture)| texture)
    }
}

pub struct AppState {
    pub settings: Settings,
    pub models_dir: PathBuf,
    /// The models folder's files as last checked, and the Models window's download or check.
    pub models: ModelsState,
    pub photo: Option<PhotoState>,
    /// A photo sent to the worker and not yet analysed.
    pub analyzing: Option<PathBuf>,
    /// Photos to open and faces to select, in turn, to restore an image's identity.
    pub pending_faces: VecDeque<(PathBuf, usize)>,
    pub kept_faces: Vec<KeptFace>,
    pub pose: PoseState,
    pub sweep_start: SweepStarts,
    /// What Ctrl+Z takes back, newest last.
    pub undo: Vec<UndoStep>,
    /// The pointer press (its start time) whose edits are being recorded as one undo step: a
    /// drag changes the values every frame.
    pub undo_press: Option<f64>,
    pub queue: VecDeque<GenerationRequest>,
    pub running: Option<RunningJob>,
    pub next_job_id: u64,
    /// What the worker said it is busy with (loading models).
    pub busy: Option<String>,
    /// What the loaded generation models run on ("CPU, f32"), once loaded.
    pub runtime_in_use: Option<String>,
    pub notices: Vec<Notice>,
    pub gallery: GalleryState,
}
