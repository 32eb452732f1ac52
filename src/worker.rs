//! The worker thread: owns the loaded models and runs all heavy work — photo decoding, face
//! analysis, model loading, generation — so the UI thread never waits. Commands come in and
//! events go out over crossbeam channels; events carry plain RGB buffers, never egui types, and
//! after each one the worker wakes the UI through the callback it was given.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use image::RgbImage;

use crate::diffusion::preview;
use crate::engine::{Arc2FacePipeline, EngineError, ErrorKind, Flow, GenerationSpec, ImageMetadata, Job, JobOutcome, PoseSpec};
use crate::face::{self, Face, FaceAnalyzer};
use crate::gallery::history;
use crate::models::ModelsDir;

/// What the UI asks of the worker.
pub enum Command {
    /// Decode a photo and find its faces.
    AnalyzePhoto {
        path: PathBuf,
        purpose: PhotoPurpose,
    },
    Generate(Box<GenerationRequest>),
    /// Drop loaded models (the models folder changed); they load again when next needed.
    UnloadModels {
        models_dir: PathBuf,
    },
}

/// What a photo is opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhotoPurpose {
    /// The identity: it becomes the photo the faces are picked from.
    Identity,
    /// Only the head pose of its largest face (a photo dropped on the Pose panel).
    Pose,
}

/// One queued generation: the spec of a batch of images of one identity, and the identity.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub job_id: u64,
    pub spec: GenerationSpec,
    /// Normalised ArcFace vector of the chosen face(s); the spec says where it came from.
    pub identity: Vec<f32>,
    /// Where finished images are written (the gallery's folder).
    pub gallery_dir: PathBuf,
    /// The photo whose look the images keep, when the spec has a reference.
    pub reference: Option<ReferencePhoto>,
}

/// A photo and the keypoints of the face it is aligned on.
#[derive(Debug, Clone)]
pub struct ReferencePhoto {
    pub path: PathBuf,
    pub keypoints: [[f32; 2]; 5],
}

/// Why a job failed, with the kind of trouble so that the UI can suggest a fix.
#[derive(Debug, Clone)]
pub struct JobError {
    pub kind: ErrorKind,
    pub message: String,
}

impl From<EngineError> for JobError {
    fn from(error: EngineError) -> Self {
        JobError { kind: error.kind(), message: error.to_string() }
    }
}

/// What the worker reports.
// A photo's pixels make one variant large; a few events a frame pass through the channel.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    PhotoAnalyzed {
        path: PathBuf,
        purpose: PhotoPurpose,
        photo: RgbImage,
        faces: Vec<Face>,
        /// A small square picture of each face, in the order of `faces`.
        crops: Vec<RgbImage>,
    },
    PhotoFailed {
        path: PathBuf,
        purpose: PhotoPurpose,
        message: String,
    },
    /// Long work without steps (loading models); shown until the next event.
    Busy {
        what: String,
    },
    Progress {
        job_id: u64,
        image_index: usize,
        step: usize,
        steps: usize,
        preview: RgbImage,
    },
    /// A finished image, already written into the gallery folder (or why it could not be).
    ImageReady {
        job_id: u64,
        image: RgbImage,
        saved: Result<PathBuf, String>,
        metadata: ImageMetadata,
    },
    /// The generation models are loaded and run on this ("CPU, f32").
    ModelsLoaded {
        runtime: String,
    },
    JobFinished {
        job_id: u64,
        outcome: JobOutcome,
    },
    JobFailed {
        job_id: u64,
        error: JobError,
    },
}

/// Room for this many events between two UI frames; step previews beyond it are dropped rather
/// than holding up the generation (a newer one follows), every other event waits for room.
const EVENT_CAPACITY: usize = 256;
/// The side of the face pictures the photo panel picks faces from.
const FACE_CROP_SIDE: u32 = 64;
/// The UI sends a command per user action; the worker takes them one at a time.
const COMMAND_CAPACITY: usize = 64;

/// The UI's handle on the worker thread. Dropping it ends the thread after its current command.
pub struct Worker {
    commands: Option<Sender<Command>>,
    events: Receiver<Event>,
    /// The job the UI asked to cancel; checked between denoising steps.
    cancelled_job: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the worker. `wake` is called after every event (egui's `request_repaint`).
    pub fn spawn(models_dir: PathBuf, wake: impl Fn() + Send + 'static) -> std::io::Result<Self> {
        let (command_tx, command_rx) = crossbeam_channel::bounded(COMMAND_CAPACITY);
        let (event_tx, event_rx) = crossbeam_channel::bounded(EVENT_CAPACITY);
        let cancelled_job = Arc::new(AtomicU64::new(u64::MAX));
        let mut state = WorkerState {
            models_dir,
            pipeline: None,
            analyzer: None,
            events: event_tx,
            wake: Box::new(wake),
            cancelled_job: cancelled_job.clone(),
        };
        let thread = std::thread::Builder::new().name("arc2face-worker".into()).spawn(move || {
            for command in command_rx {
                state.handle(command);
            }
        })?;
        Ok(Self { commands: Some(command_tx), events: event_rx, cancelled_job, thread: Some(thread) })
    }

    /// Hands a command over without waiting; `false` when the worker is gone or has
    /// [`COMMAND_CAPACITY`] commands waiting already.
    pub fn send(&self, command: Command) -> bool {
        self.commands.as_ref().is_some_and(|commands| commands.try_send(command).is_ok())
    }

    /// Stops `job_id` before its next step; images it already finished stay delivered.
    pub fn cancel(&self, job_id: u64) {
        self.cancelled_job.store(job_id, Ordering::SeqCst);
    }

    /// The next event, if one is waiting.
    pub fn try_recv(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct WorkerState {
    models_dir: PathBuf,
    pipeline: Option<Arc2FacePipeline>,
    analyzer: Option<FaceAnalyzer>,
    events: Sender<Event>,
    wake: Box<dyn Fn() + Send>,
    cancelled_job: Arc<AtomicU64>,
}

impl WorkerState {
    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
        (self.wake)();
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::AnalyzePhoto { path, purpose } => {
                let result = catch_unwind(AssertUnwindSafe(|| self.analyze(&path))).unwrap_or_else(|panic| {
                    self.analyzer = None;
                    Err(panic_message(panic))
                });
                match result {
                    Ok((photo, faces)) => {
                        let crops = faces.iter().map(|face| face::crop(&photo, face, FACE_CROP_SIDE)).collect();
                        self.emit(Event::PhotoAnalyzed { path, purpose, photo, faces, crops })
                    }
                    Err(message) => self.emit(Event::PhotoFailed { path, purpose, message }),
                }
            }
            Command::Generate(request) => {
                let job_id = request.job_id;
                let result = catch_unwind(AssertUnwindSafe(|| self.generate(&request))).unwrap_or_else(|panic| {
                    self.pipeline = None;
                    Err(JobError { kind: ErrorKind::Internal, message: panic_message(panic) })
                });
                match result {
                    Ok(outcome) => self.emit(Event::JobFinished { job_id, outcome }),
                    Err(error) => self.emit(Event::JobFailed { job_id, error }),
                }
            }
            Command::UnloadModels { models_dir } => {
                self.models_dir = models_dir;
                self.pipeline = None;
                self.analyzer = None;
            }
        }
    }

    fn analyzer(&mut self) -> Result<&mut FaceAnalyzer, String> {
        if self.analyzer.is_none() {
            self.emit(Event::Busy { what: "Loading the face models…".into() });
        }
        match &mut self.analyzer {
            Some(analyzer) => Ok(analyzer),
            slot => Ok(slot.insert(FaceAnalyzer::load(&ModelsDir::new(&self.models_dir)).map_err(|e| e.to_string())?)),
        }
    }

    fn analyze(&mut self, path: &std::path::Path) -> Result<(RgbImage, Vec<Face>), String> {
        let photo = face::photo::load_photo(path).map_err(|e| e.to_string())?;
        let faces = self.analyzer()?.analyze(&photo, face::DEFAULT_DET_SIZE).map_err(|e| e.to_string())?;
        Ok((photo, faces))
    }

    fn generate(&mut self, request: &GenerationRequest) -> Result<JobOutcome, JobError> {
        // The models in memory serve the job if they were loaded for its runtime; otherwise they
        // go first, to free their memory, and the job's load.
        let runtime = request.spec.runtime.resolve()?;
        let pipeline = match self.pipeline.take() {
            Some(pipeline) if pipeline.runtime().same_as(&runtime) => pipeline,
            _ => {
                self.emit(Event::Busy { what: format!("Loading the Arc2Face models ({})…", runtime.describe()) });
                let pipeline = Arc2FacePipeline::load(&ModelsDir::new(&self.models_dir), &runtime)?;
                self.emit(Event::ModelsLoaded { runtime: runtime.describe() });
                pipeline
            }
        };
        let pipeline = self.pipeline.insert(pipeline);
        let reference_image = match &request.reference {
            Some(reference) if request.spec.reference.is_some() => {
                let bad_input = |message: String| JobError { kind: ErrorKind::BadInput, message };
                let photo = face::photo::load_photo(&reference.path).map_err(|e| bad_input(e.to_string()))?;
                let size = pipeline.size_of(&request.spec) as u32;
                let aligned = face::align::ffhq_crop(&photo, &reference.keypoints, size);
                Some(aligned.ok_or_else(|| bad_input("the reference face's keypoints cannot be aligned".into()))?)
            }
            _ => None,
        };
        let job = Job { reference_image, ..Job::new(request.spec.clone(), request.identity.clone()) };
        let (events, wake, cancelled) = (&self.events, &self.wake, &self.cancelled_job);
        // Previews turn with the head's roll as the finished images will.
        let rolls: Vec<f64> =
            (0..request.spec.num_images).map(|i| request.spec.image(i).pose.as_ref().map_or(0.0, PoseSpec::roll)).collect();
        let mut on_step = |progress: &crate::engine::StepProgress| {
            if cancelled.load(Ordering::SeqCst) == request.job_id {
                return Flow::Cancel;
            }
            if let Ok(preview) = preview::latents_to_rgb(progress.predicted_x0) {
                let roll = rolls.get(progress.image_index).copied().unwrap_or(0.0);
                let preview = if roll == 0.0 { preview } else { crate::pose::rotate_image(&preview, roll) };
                let event = Event::Progress {
                    job_id: request.job_id,
                    image_index: progress.image_index,
                    step: progress.step,
                    steps: progress.steps,
                    preview,
                };
                // A preview the UI has no room for is dropped: the next step brings a newer one.
                if events.try_send(event).is_ok() {
                    wake();
                }
            }
            Flow::Continue
        };
        let analyzer = &mut self.analyzer;
        let mut on_image = |mut generated: crate::engine::GeneratedImage| {
            generated.metadata.identity_match =
                analyzer.as_mut().and_then(|a| face::identity_match(a, &generated.image, &request.identity));
            let saved = history::write_image(&request.gallery_dir, &generated.image, &generated.metadata).map_err(|e| e.to_string());
            let _ = events.send(Event::ImageReady { job_id: request.job_id, image: generated.image, saved, metadata: generated.metadata });
            wake();
            Ok(())
        };
        Ok(pipeline.run(&job, &mut on_step, &mut on_image)?)
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error (the app is still usable): {text}")
}
