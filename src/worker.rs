//! The worker thread: owns the loaded models and runs all heavy work — photo decoding, face
//! analysis, model loading, generation — so the UI thread never waits. Commands come in and
//! events go out over crossbeam channels; events carry plain RGB buffers, never egui types, and
//! after each one the worker wakes the UI through the callback it was given.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use candle_core::{DType, Device};
use crossbeam_channel::{Receiver, Sender};
use image::RgbImage;

use crate::diffusion::preview;
use crate::engine::{Arc2FacePipeline, Flow, InitialNoise, Job, JobOutcome, SamplingParams};
use crate::face::{self, Face, FaceAnalyzer};
use crate::gallery::history;
use crate::gallery::metadata::{self, GenerationMetadata};
use crate::models::ModelsDir;

/// What the UI asks of the worker.
pub enum Command {
    /// Decode a photo and find its faces.
    AnalyzePhoto {
        path: PathBuf,
    },
    Generate(GenerationRequest),
    /// Drop loaded models (the models folder changed); they load again when next needed.
    UnloadModels {
        models_dir: PathBuf,
    },
}

/// One queued generation: a batch of images of one identity.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub job_id: u64,
    /// Normalised ArcFace vector of the chosen face.
    pub identity: Vec<f32>,
    /// Where the identity came from, for the metadata (a file name and face number).
    pub identity_source: String,
    pub num_images: usize,
    pub steps: usize,
    pub guidance: f64,
    /// Image i uses seed + i.
    pub seed: u64,
    /// Where finished images are written (the gallery's folder).
    pub gallery_dir: PathBuf,
}

/// What the worker reports.
pub enum Event {
    PhotoAnalyzed {
        path: PathBuf,
        photo: RgbImage,
        faces: Vec<Face>,
    },
    PhotoFailed {
        path: PathBuf,
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
        metadata: GenerationMetadata,
        identity_match: Option<f32>,
    },
    JobFinished {
        job_id: u64,
        outcome: JobOutcome,
    },
    JobFailed {
        job_id: u64,
        message: String,
    },
}

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
        let (command_tx, command_rx) = crossbeam_channel::unbounded();
        let (event_tx, event_rx) = crossbeam_channel::unbounded();
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

    pub fn send(&self, command: Command) {
        if let Some(commands) = &self.commands {
            // Fails only when the thread is gone, and it catches every panic.
            let _ = commands.send(command);
        }
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
            Command::AnalyzePhoto { path } => {
                let result = catch_unwind(AssertUnwindSafe(|| self.analyze(&path))).unwrap_or_else(|panic| {
                    self.analyzer = None;
                    Err(panic_message(panic))
                });
                match result {
                    Ok((photo, faces)) => self.emit(Event::PhotoAnalyzed { path, photo, faces }),
                    Err(message) => self.emit(Event::PhotoFailed { path, message }),
                }
            }
            Command::Generate(request) => {
                let job_id = request.job_id;
                let result = catch_unwind(AssertUnwindSafe(|| self.generate(&request))).unwrap_or_else(|panic| {
                    self.pipeline = None;
                    Err(panic_message(panic))
                });
                match result {
                    Ok(outcome) => self.emit(Event::JobFinished { job_id, outcome }),
                    Err(message) => self.emit(Event::JobFailed { job_id, message }),
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
            let analyzer = FaceAnalyzer::load(&ModelsDir::new(&self.models_dir)).map_err(|e| e.to_string())?;
            self.analyzer = Some(analyzer);
        }
        Ok(self.analyzer.as_mut().expect("loaded above"))
    }

    fn analyze(&mut self, path: &std::path::Path) -> Result<(RgbImage, Vec<Face>), String> {
        let photo = face::photo::load_photo(path).map_err(|e| e.to_string())?;
        let faces = self.analyzer()?.analyze(&photo, face::DEFAULT_DET_SIZE).map_err(|e| e.to_string())?;
        Ok((photo, faces))
    }

    fn generate(&mut self, request: &GenerationRequest) -> Result<JobOutcome, String> {
        if self.pipeline.is_none() {
            self.emit(Event::Busy { what: "Loading the Arc2Face models…".into() });
            let (device, dtype) = default_device();
            let pipeline = Arc2FacePipeline::load(&ModelsDir::new(&self.models_dir), &device, dtype).map_err(|e| e.to_string())?;
            self.pipeline = Some(pipeline);
        }
        let pipeline = self.pipeline.as_ref().expect("loaded above");
        let params = SamplingParams { steps: request.steps, guidance: request.guidance, size: pipeline.default_size() };
        let job =
            Job { identity: request.identity.clone(), num_images: request.num_images, params, noise: InitialNoise::Seed(request.seed) };
        let (events, wake, cancelled) = (&self.events, &self.wake, &self.cancelled_job);
        let emit = |event| {
            let _ = events.send(event);
            wake();
        };
        let mut on_step = |progress: &crate::engine::StepProgress| {
            if cancelled.load(Ordering::SeqCst) == request.job_id {
                return Flow::Cancel;
            }
            if let Ok(preview) = preview::latents_to_rgb(progress.predicted_x0) {
                emit(Event::Progress {
                    job_id: request.job_id,
                    image_index: progress.image_index,
                    step: progress.step,
                    steps: progress.steps,
                    preview,
                });
            }
            Flow::Continue
        };
        let files = pipeline.files().iter().map(Into::into).collect::<Vec<_>>();
        let analyzer = &mut self.analyzer;
        let mut on_image = |generated: crate::engine::GeneratedImage| {
            let identity_match = analyzer.as_mut().and_then(|a| face::identity_match(a, &generated.image, &request.identity));
            let metadata = GenerationMetadata {
                app: env!("CARGO_PKG_NAME").into(),
                app_version: env!("CARGO_PKG_VERSION").into(),
                seed: generated.seed,
                steps: params.steps,
                guidance: params.guidance,
                width: generated.image.width() as usize,
                height: generated.image.height() as usize,
                scheduler: metadata::SCHEDULER_NAME.into(),
                identity_source: request.identity_source.clone(),
                model_files: files.clone(),
            };
            let saved = history::write_image(&request.gallery_dir, &generated.image, &metadata).map_err(|e| e.to_string());
            emit(Event::ImageReady { job_id: request.job_id, image: generated.image, saved, metadata, identity_match });
            Ok(())
        };
        pipeline.run(&job, &mut on_step, &mut on_image).map_err(|e| e.to_string())
    }
}

/// CUDA with f16 when this build has it and a GPU answers; the CPU in f32 otherwise.
fn default_device() -> (Device, DType) {
    match Device::new_cuda(0) {
        Ok(device) => (device, DType::F16),
        Err(_) => (Device::Cpu, DType::F32),
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
