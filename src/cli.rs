//! The command line: `arc2face generate …`. It calls the same engine as the GUI, synchronously.
//! stdout carries only results (one PNG path per line); logs and progress go to stderr.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{DType, Tensor};
use clap::{Args, Parser, Subcommand};

use crate::diffusion::schedulers::Sampler;
use crate::engine::{
    Arc2FacePipeline, DeviceChoice, EngineError, ExpressionSpec, FaceRef, Flow, GeneratedImage, GenerationSpec, HeadMesh, IdentitySource,
    Job, JobOutcome, LoraSpec, PoseSpec, PoseTarget, Precision, ReferenceSpec, RuntimeSpec, StepProgress, load_head,
};
use crate::expression::Expression;
use crate::face::{self, FaceAnalyzer};
use crate::gallery::metadata;
use crate::models::download::{self, DownloadEvent, DownloadOptions, TransferProgress};
use crate::models::hub::{Hub, HubConfig};
use crate::models::{self, ModelFile, ModelsDir, check};
use crate::pose::{self, HeadModel, HeadPose};

#[derive(Debug, Parser)]
#[command(name = "arc2face", version, about = "Arc2Face Studio: new photos of a person from one photo")]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Without a subcommand: the models folder the desktop app uses.
    #[arg(long, env = "ARC2FACE_MODELS")]
    pub models: Option<PathBuf>,
    /// Without a subcommand: photos the desktop app opens at start.
    pub photos: Vec<PathBuf>,
    /// CPU threads the models compute on [default: RAYON_NUM_THREADS, else the physical cores].
    #[arg(long, global = true, env = "ARC2FACE_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

// Parsed once per process: the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate images of one identity.
    Generate(GenerateArgs),
    /// List the faces of a photo as JSON: box, score, keypoints and raw embedding.
    Faces(FacesArgs),
    /// Check the models folder and fetch what is missing.
    Models(ModelsArgs),
    /// Write the pose ControlNet's conditioning image for a head pose (at roll 0: generate turns
    /// the finished image by the roll).
    RenderPose(RenderPoseArgs),
    /// Print the head pose of a face in a photo as JSON (as --pose takes it).
    FitPose(FitPoseArgs),
}

#[derive(Debug, Args)]
pub struct RenderPoseArgs {
    /// The pose: a .json as `generate --pose` takes it.
    #[arg(value_parser = parse_pose, required_unless_present = "from_photo", conflicts_with = "from_photo")]
    pub pose: Option<HeadPose>,
    /// The pose of a face in this photo instead (needs the face models).
    #[arg(long, value_name = "PHOTO")]
    pub from_photo: Option<PathBuf>,
    /// Which face of the photo, as `arc2face faces` lists them; default the largest.
    #[arg(long, requires = "from_photo")]
    pub face: Option<usize>,
    /// The image side in pixels.
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    #[arg(long, value_name = "FILE.png")]
    pub out: PathBuf,
    /// The models folder: its FLAME model file, when it has one, is the head rendered (else the
    /// built-in head), and --from-photo needs its face models.
    #[arg(long, env = "ARC2FACE_MODELS")]
    pub models: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FitPoseArgs {
    pub photo: PathBuf,
    /// Which face of the photo, as `arc2face faces` lists them; default the largest.
    #[arg(long)]
    pub face: Option<usize>,
    /// The models folder (the face models, and the FLAME model file when it has one).
    #[arg(long, env = "ARC2FACE_MODELS")]
    pub models: PathBuf,
    /// The face detector's square input size.
    #[arg(long, default_value_t = face::DEFAULT_DET_SIZE)]
    pub det_size: usize,
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// The models folder [default: ARC2FACE_MODELS, else the app's data folder].
    #[arg(long, env = "ARC2FACE_MODELS", global = true)]
    pub models: Option<PathBuf>,
    #[command(subcommand)]
    pub action: ModelsAction,
}

#[derive(Debug, Subcommand)]
pub enum ModelsAction {
    /// List every file as present, missing or wrong; fails when any is missing or wrong.
    Status,
    /// Fetch the missing files from the Hugging Face Hub, or its local cache, verified.
    /// Honours HF_ENDPOINT, HF_TOKEN, HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE.
    Download {
        /// Files fetched at once.
        #[arg(long, default_value_t = 2)]
        parallel: usize,
        /// Only these files, as `status` names them (repeatable) [default: every missing file].
        #[arg(long)]
        only: Vec<String>,
        /// Fetch again files that are present, e.g. ones `verify` found wrong; each old file
        /// stays until its replacement is verified.
        #[arg(long)]
        replace: bool,
    },
    /// Open every present file as its loader would and compare it with the checksum recorded
    /// at download; fails naming each bad file.
    Verify,
}

#[derive(Debug, Args)]
pub struct FacesArgs {
    /// The models folder (needs antelopev2/scrfd_10g_bnkps.onnx and arcface.onnx).
    #[arg(long, env = "ARC2FACE_MODELS")]
    pub models: PathBuf,
    pub photo: PathBuf,
    /// The detector's square input size.
    #[arg(long, default_value_t = face::DEFAULT_DET_SIZE)]
    pub det_size: usize,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The models folder (laid out as README.md describes).
    #[arg(long, env = "ARC2FACE_MODELS")]
    pub models: PathBuf,
    /// A raw ArcFace vector: float32 .npy of shape (D,) or (1, D).
    #[arg(long, required_unless_present = "photo", conflicts_with = "photo")]
    pub embedding: Option<PathBuf>,
    /// A photo of the person; repeat it to combine several photos into one identity.
    #[arg(long)]
    pub photo: Vec<PathBuf>,
    /// Which face of the photo, as `arc2face faces` lists them; default the largest.
    #[arg(long, requires = "photo")]
    pub face: Option<usize>,
    /// The face detector's square input size.
    #[arg(long, default_value_t = face::DEFAULT_DET_SIZE)]
    pub det_size: usize,
    /// Start from the settings an image made by Arc2Face Studio records (one image, its seed);
    /// the flags given override them. The identity is never in a PNG: give it as usual.
    #[arg(long, value_name = "FILE.png")]
    pub from: Option<PathBuf>,
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Copy the head pose of a face in this photo (fitted to its five keypoints).
    #[arg(long, value_name = "PHOTO", conflicts_with_all = ["pose", "pose_image"])]
    pub pose_from_photo: Option<PathBuf>,
    /// Which face of the --pose-from-photo photo; default the largest.
    #[arg(long, requires = "pose_from_photo")]
    pub pose_face: Option<usize>,
    /// Keep this photo's look (background, light, clothes) through the Reference Adapter; the
    /// photo is aligned on its largest face (or --reference-face).
    #[arg(long, value_name = "PHOTO")]
    pub reference: Option<PathBuf>,
    /// Which face of the --reference photo to align it on; default the largest.
    #[arg(long, requires = "reference", conflicts_with = "reference_aligned")]
    pub reference_face: Option<usize>,
    /// The --reference file is already an aligned portrait: it is only resized.
    #[arg(long, requires = "reference")]
    pub reference_aligned: bool,
    /// Initial latents (N, C, h, w) float32 .npy instead of seeded noise; a --seed given too
    /// only feeds the noise euler-a and lcm add at each step.
    #[arg(long)]
    pub noise: Option<PathBuf>,
    /// Folder for the PNGs.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Write the final latents (N, C, h, w) float32, before division by the VAE scaling factor.
    #[arg(long)]
    pub latents_out: Option<PathBuf>,
}

/// The generation settings as flags. Each one given replaces the value from the defaults (or
/// from `--from`); the defaults are [`GenerationSpec::default`]'s.
#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// Number of images [default: 4; 1 with --from; the batch of --noise].
    #[arg(long)]
    pub num_images: Option<usize>,
    /// Denoising steps [default: 25].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance; ≤ 1 turns it off [default: 3.0].
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Image i uses seed S+i [default: random, printed to stderr].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Image side in pixels, a multiple of 64 for the real models [default: the size the model
    /// was trained at, 512].
    #[arg(long)]
    pub size: Option<usize>,
    /// The sampler [default: dpmpp-2m].
    #[arg(long, value_enum)]
    pub scheduler: Option<Sampler>,
    /// A LoRA for the UNet (kohya, diffusers or PEFT safetensors) and its scale [default 1.0];
    /// repeat it for several.
    #[arg(long, value_name = "FILE[:SCALE]", value_parser = parse_lora)]
    pub lora: Vec<LoraSpec>,
    /// Fast mode: the models folder's LCM-LoRA, the lcm sampler, 4 steps, guidance 1.0; flags
    /// given with it still win.
    #[arg(long)]
    pub fast: bool,
    /// A target head pose for the pose ControlNet: a .json object with `yaw` (±60°, positive
    /// turns the nose to image right), `pitch` (±30°, positive looks up), `roll` (±20°, positive
    /// tilts counter-clockwise), `jaw` (0 closed … 1 open), `scale` (0.7–1.4) and `offset`
    /// ([x, y], ±0.2 of the image side); omitted keys are frontal defaults.
    #[arg(long, value_name = "FILE.json", value_parser = parse_pose, conflicts_with = "pose_image")]
    pub pose: Option<HeadPose>,
    /// A pose ControlNet conditioning image (a normal-map render), used as given; it must be
    /// as large as the images (render-pose --size makes one).
    #[arg(long, value_name = "FILE")]
    pub pose_image: Option<PathBuf>,
    /// How strongly the pose steers (the ControlNet's residuals are multiplied by this)
    /// [default: 1.0].
    #[arg(long)]
    pub controlnet_scale: Option<f64>,
    /// The fraction of the steps at which the ControlNet starts [default: 0].
    #[arg(long)]
    pub control_start: Option<f64>,
    /// The fraction of the steps after which it stops [default: 1].
    #[arg(long)]
    pub control_end: Option<f64>,
    /// A target expression for the Expression Adapter: a .npy of 55 float32 (50 FLAME expression
    /// coefficients, 2 eyelids, 3 jaw) or a .json object with named fields (`expression` list,
    /// `eyelids`, `jaw_open`, `jaw_sideways`, `jaw_roll`).
    #[arg(long, value_name = "FILE", value_parser = parse_expression)]
    pub expression: Option<Expression>,
    /// How much the expression's attention counts [default: 1.0].
    #[arg(long)]
    pub expression_scale: Option<f64>,
    /// How much the Reference Adapter's LoRA counts, 0 to 1: lower keeps the expression truer,
    /// higher the photo's background and pose [default: 0.8].
    #[arg(long)]
    pub reference_scale: Option<f64>,
    /// auto, cpu, cuda or cuda:N [default: auto: CUDA when this build has it and a GPU answers].
    #[arg(long, value_parser = DeviceChoice::parse)]
    pub device: Option<DeviceChoice>,
    /// Model precision [default: auto: f16 on CUDA, f32 on the CPU].
    #[arg(long, value_enum)]
    pub dtype: Option<Precision>,
}

impl SettingsArgs {
    /// Writes every flag given into `spec`.
    pub fn apply(&self, spec: &mut GenerationSpec) {
        let Self {
            num_images,
            steps,
            guidance,
            seed,
            size,
            scheduler,
            lora,
            fast,
            pose,
            pose_image,
            controlnet_scale,
            control_start,
            control_end,
            expression,
            expression_scale,
            reference_scale,
            device,
            dtype,
        } = self;
        if *fast {
            *spec = spec.in_fast_mode();
        }
        if !lora.is_empty() {
            spec.loras.retain(|l| *fast && l.file == models::LCM_LORA.relative_path);
            spec.loras.extend(lora.iter().cloned());
        }
        if let Some(n) = num_images {
            spec.num_images = *n;
        }
        if let Some(steps) = steps {
            spec.steps = *steps;
        }
        if let Some(guidance) = guidance {
            spec.guidance = *guidance;
        }
        if seed.is_some() {
            spec.seed = *seed;
        }
        if size.is_some() {
            spec.size = *size;
        }
        if let Some(sampler) = scheduler {
            spec.sampler = *sampler;
        }
        if let Some(pose) = pose {
            // The mesh is the models folder's choice: generate sets it once the folder is known.
            let target = PoseTarget::Head { pose: *pose, mesh: HeadMesh::Builtin };
            spec.pose = Some(PoseSpec { target, ..spec.pose.clone().unwrap_or_default() });
        }
        if let Some(path) = pose_image {
            let target = PoseTarget::Image { file: crate::file_name(path) };
            spec.pose = Some(PoseSpec { target, ..spec.pose.clone().unwrap_or_default() });
        }
        if let Some(pose) = &mut spec.pose {
            pose.controlnet_scale = controlnet_scale.unwrap_or(pose.controlnet_scale);
            pose.control_start = control_start.unwrap_or(pose.control_start);
            pose.control_end = control_end.unwrap_or(pose.control_end);
        }
        if let Some(expression) = expression {
            spec.expression = Some(ExpressionSpec { expression: expression.clone(), ..spec.expression.clone().unwrap_or_default() });
        }
        if let (Some(expression), Some(scale)) = (&mut spec.expression, expression_scale) {
            expression.scale = *scale;
        }
        if let (Some(reference), Some(scale)) = (&mut spec.reference, reference_scale) {
            reference.scale = *scale;
        }
        if let Some(device) = device {
            spec.runtime.device = *device;
        }
        if let Some(dtype) = dtype {
            spec.runtime.precision = *dtype;
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    crate::engine::set_cpu_threads(cli.threads.map(usize::from));
    match cli.command {
        Some(Command::Generate(args)) => generate(args),
        Some(Command::Faces(args)) => faces(args),
        Some(Command::Models(args)) => models_command(args),
        Some(Command::RenderPose(args)) => render_pose(args),
        Some(Command::FitPose(args)) => fit_pose(args),
        None => crate::app::run(cli.models, cli.photos),
    }
}

fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let mut spec = match &args.from {
        Some(png) => {
            let metadata = metadata::read_metadata(png)
                .with_context(|| format!("{}: not a readable PNG", png.display()))?
                .with_context(|| format!("{}: no Arc2Face Studio settings in this PNG", png.display()))?;
            GenerationSpec::restored(&metadata.spec, RuntimeSpec::default())
        }
        None => GenerationSpec::default(),
    };
    if let Some(path) = &args.reference {
        let photo = crate::file_name(path);
        spec.reference = Some(ReferenceSpec { photo, face: None, ..spec.reference.clone().unwrap_or_default() });
    }
    args.settings.apply(&mut spec);
    let models = ModelsDir::new(&args.models);
    let mut analysed = Vec::new();
    let identity = match &args.embedding {
        Some(path) => {
            spec.identity = IdentitySource::Embedding { file: crate::file_name(path) };
            read_identity(path, &models)?
        }
        None => identity_from_photos(&args, &mut spec, &mut analysed)?,
    };
    if let Some(photo) = &args.pose_from_photo {
        let mesh = HeadMesh::preferred(&models);
        let pose = pose_of_photo(&args.models, photo, args.pose_face, args.det_size, &load_head(&models, &mesh)?)?;
        spec.pose = Some(PoseSpec { target: PoseTarget::Head { pose, mesh }, ..spec.pose.clone().unwrap_or_default() });
    } else if args.settings.pose.is_some()
        && let Some(PoseSpec { target: PoseTarget::Head { mesh, .. }, .. }) = &mut spec.pose
    {
        *mesh = HeadMesh::preferred(&models);
    }
    let initial_latents = args.noise.as_deref().map(read_noise).transpose()?;
    if let Some(latents) = &initial_latents {
        spec.seed = args.settings.seed;
        spec.num_images = args.settings.num_images.unwrap_or(latents.dim(0)?);
    } else if spec.seed.is_none() {
        let seed = crate::engine::random_seed();
        eprintln!("seed: {seed}");
        spec.seed = Some(seed);
    }
    writable_folder(&args.out)?;

    let started = Instant::now();
    let runtime = spec.runtime.resolve()?;
    let mut pipeline = Arc2FacePipeline::load(&models, &runtime)?;
    eprintln!("loaded models from {} in {:.1}s ({})", args.models.display(), started.elapsed().as_secs_f64(), runtime.describe());
    // Given latents are for the size they are, once the VAE's scale factor is known.
    if let (Some(latents), None) = (&initial_latents, args.settings.size) {
        spec.size = Some(latents.dim(2)? * pipeline.vae_scale_factor());
    }
    let num_images = spec.num_images;
    let pose_image = match (&spec.pose, &args.settings.pose_image) {
        (Some(PoseSpec { target: PoseTarget::Image { .. }, .. }), Some(path)) => Some(face::photo::load_photo(path)?),
        (Some(PoseSpec { target: PoseTarget::Image { file }, .. }), None) => {
            bail!("the settings ask for the pose image {file}: give it with --pose-image")
        }
        _ => None,
    };
    let size = pipeline.size_of(&spec);
    let reference_image = match (&mut spec.reference, &args.reference) {
        (Some(reference), Some(path)) => {
            let (image, face) = reference_photo(&args, path, size, &mut analysed)?;
            reference.face = face;
            Some(image)
        }
        (Some(reference), None) => bail!("the settings keep the look of the photo {}: give it with --reference", reference.photo),
        (None, _) => None,
    };
    let job = Job { spec, identity, initial_latents, pose_image, reference_image };
    pipeline.check(&job)?;

    let interrupted = interrupt_flag();
    let mut final_latents = Vec::new();
    let mut stdout = std::io::stdout().lock();
    let interactive = std::io::stderr().is_terminal();
    // Timings: the first step's latency, and the denoising rate (steps over the time from each
    // image's start to its last step, so decoding and writing are left out).
    let run_started = Instant::now();
    let image_started = std::cell::Cell::new(run_started);
    let (first_step, steps_done, denoising) = (std::cell::Cell::new(None), std::cell::Cell::new(0usize), std::cell::Cell::new(0f64));
    let mut on_step = |p: &StepProgress| {
        first_step.set(first_step.get().or(Some(run_started.elapsed())));
        steps_done.set(steps_done.get() + 1);
        if p.step == p.steps {
            denoising.set(denoising.get() + image_started.get().elapsed().as_secs_f64());
        }
        if interactive {
            eprint!("\rimage {}/{num_images}: step {}/{}", p.image_index + 1, p.step, p.steps);
        }
        if interrupted.load(Ordering::SeqCst) { Flow::Cancel } else { Flow::Continue }
    };
    let mut on_image = |generated: GeneratedImage| {
        let stem = metadata::file_stem(&generated.metadata);
        let path =
            metadata::write_png(&args.out, &stem, &generated.image, &generated.metadata).map_err(|e| EngineError::Output(e.to_string()))?;
        if interactive {
            eprintln!();
        }
        eprintln!("image {}/{num_images} done in {:.1}s", generated.index + 1, image_started.get().elapsed().as_secs_f64());
        image_started.set(Instant::now());
        let _ = writeln!(stdout, "{}", path.display());
        final_latents.push(generated.latents);
        Ok(())
    };
    let outcome = pipeline.run(&job, &mut on_step, &mut on_image)?;
    if outcome == JobOutcome::Cancelled {
        if interactive {
            eprintln!();
        }
        bail!("interrupted: {} of {num_images} images were written, each whole", final_latents.len());
    }

    if let Some(path) = &args.latents_out {
        Tensor::cat(&final_latents, 0)?.write_npy(path).with_context(|| format!("could not write {}", path.display()))?;
    }
    if let Some(first) = first_step.get() {
        let rate = steps_done.get() as f64 / denoising.get().max(1e-9);
        eprintln!("first step after {:.3}s; {} steps at {rate:.2} it/s (denoising alone)", first.as_secs_f64(), steps_done.get());
    }
    eprintln!("finished in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The head pose of a face (default the largest) of `photo`, fitted on `head`.
fn pose_of_photo(models: &Path, photo: &Path, face: Option<usize>, det_size: usize, head: &HeadModel) -> anyhow::Result<HeadPose> {
    let image = face::photo::load_photo(photo)?;
    let faces = load_face_analyzer(models)?.analyze(&image, det_size)?;
    let Some(largest) = face::largest_face(&faces) else {
        bail!("{}: no face found; try a photo with more margin around the face", photo.display());
    };
    let index = face.unwrap_or(largest);
    let Some(chosen) = faces.get(index) else {
        bail!("{}: face {index} asked for, but the photo has {} face(s), numbered from 0", photo.display(), faces.len());
    };
    let pose = pose::fit_pose(head, &chosen.kps);
    eprintln!("{}: face {index} looks yaw {:.1}°, pitch {:.1}°, roll {:.1}°", crate::file_name(photo), pose.yaw, pose.pitch, pose.roll);
    Ok(pose)
}

fn render_pose(args: RenderPoseArgs) -> anyhow::Result<()> {
    if !(16..=4096).contains(&args.size) {
        bail!("--size must be between 16 and 4096 pixels, got {}", args.size);
    }
    let models = args.models.as_deref().map(ModelsDir::new);
    let mesh = models.as_ref().map_or(HeadMesh::Builtin, HeadMesh::preferred);
    let head = load_head(models.as_ref().unwrap_or(&ModelsDir::new(".")), &mesh)?;
    let pose = match (&args.pose, &args.from_photo, &args.models) {
        (Some(pose), _, _) => *pose,
        (None, Some(photo), Some(models)) => pose_of_photo(models, photo, args.face, face::DEFAULT_DET_SIZE, &head)?,
        (None, Some(_), None) => bail!("--from-photo needs the face models: give --models or set ARC2FACE_MODELS"),
        (None, None, _) => bail!("give a pose .json or --from-photo"),
    };
    let image = pose::render_normals(&head, &pose.clamped(), args.size);
    image.save_with_format(&args.out, image::ImageFormat::Png).with_context(|| format!("could not write {}", args.out.display()))?;
    eprintln!("{} head, {} px", head.source(), args.size);
    println!("{}", args.out.display());
    Ok(())
}

fn fit_pose(args: FitPoseArgs) -> anyhow::Result<()> {
    let models = ModelsDir::new(&args.models);
    let head = load_head(&models, &HeadMesh::preferred(&models))?;
    let pose = pose_of_photo(&args.models, &args.photo, args.face, args.det_size, &head)?;
    println!("{}", serde_json::to_string(&pose)?);
    Ok(())
}

/// A head pose from a `.json` file; every value must lie within the pose limits.
fn parse_pose(path: &str) -> Result<HeadPose, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let pose: HeadPose = serde_json::from_str(&text).map_err(|e| format!("{path}: not a head pose: {e}"))?;
    pose.check().map_err(|e| format!("{path}: {e}"))?;
    Ok(pose)
}

/// `FILE[:SCALE]`: the file made absolute (the spec outlives the working folder), scale 1.0
/// unless given.
fn parse_lora(text: &str) -> Result<LoraSpec, String> {
    let (file, scale) = match text.rsplit_once(':').map(|(f, s)| (f, s.parse::<f64>())) {
        Some((file, Ok(scale))) => (file, scale),
        _ => (text, 1.0),
    };
    if !scale.is_finite() {
        return Err(format!("{text}: the scale must be a finite number"));
    }
    let path = std::path::absolute(file).map_err(|e| format!("{file}: {e}"))?;
    if !path.is_file() {
        return Err(format!("{}: no such LoRA file", path.display()));
    }
    Ok(LoraSpec { file: path.to_string_lossy().into_owned(), scale })
}

/// An expression from a `.npy` of 55 values or a `.json` of named fields; the training clamps
/// apply when it is used.
fn parse_expression(path: &str) -> Result<Expression, String> {
    let path = Path::new(path);
    let expression = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not an expression: {e}", path.display()))?
    } else {
        let tensor = Tensor::read_npy(path)
            .map_err(|e| format!("{}: not a readable .npy file ({})", path.display(), models::first_line(&e.to_string())))?;
        let values: Vec<f32> = tensor.flatten_all().and_then(|t| t.to_dtype(DType::F32)?.to_vec1()).map_err(|e| e.to_string())?;
        Expression::from_values(&values).map_err(|e| format!("{}: {e}", path.display()))?
    };
    expression.check().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(expression)
}

/// Set once the user presses Ctrl+C (or the process gets SIGINT/SIGTERM): the run then stops
/// after the current step, so that only whole PNGs are left behind.
fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    // Fails only if a handler is already installed, and then the default behaviour stays.
    let _ = ctrlc::set_handler(move || set.store(true, Ordering::SeqCst));
    flag
}

/// Fails now, before any model loads, when PNGs could not be written into `dir`.
fn writable_folder(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the output folder {}", dir.display()))?;
    let probe = dir.join(format!(".arc2face-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("cannot write into the output folder {}", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

fn models_command(args: ModelsArgs) -> anyhow::Result<()> {
    let models = ModelsDir::new(args.models.unwrap_or_else(models::default_models_dir));
    eprintln!("models folder: {}", models.root().display());
    let statuses = match args.action {
        ModelsAction::Status => check::status(&models),
        ModelsAction::Verify => check::verify(&models, |file| eprintln!("checking {}", file.relative_path)),
        ModelsAction::Download { parallel, only, replace } => return download(&models, DownloadOptions { parallel, replace }, &only),
    };
    for status in &statuses {
        println!("{:<48} {:<18} {}", status.file.relative_path, status.file.needed_for.label(), status.describe());
    }
    match face::runtime::runtime() {
        Ok(runtime) => println!("ONNX Runtime {}: {}", face::runtime::ONNXRUNTIME_VERSION, runtime.library.display()),
        Err(message) => println!("ONNX Runtime: {message}"),
    }
    let bad = statuses.iter().filter(|s| !matches!(s.state, check::FileState::Present { .. })).count();
    if bad > 0 {
        bail!("{bad} of {} model files missing or wrong; `arc2face models download` fetches missing ones", statuses.len());
    }
    Ok(())
}

fn download(models: &ModelsDir, options: DownloadOptions, only: &[String]) -> anyhow::Result<()> {
    for name in only {
        anyhow::ensure!(
            models::ALL_FILES.iter().any(|f| f.relative_path == name),
            "{name}: not a model file; `arc2face models status` lists them"
        );
    }
    let files: Vec<ModelFile> =
        models::ALL_FILES.into_iter().filter(|f| only.is_empty() || only.iter().any(|name| name == f.relative_path)).collect();
    let hub = Hub::new(HubConfig::from_env());
    // Per file: its progress, and the tenths of it already reported.
    let progress = std::sync::Mutex::new(vec![(TransferProgress::default(), 0u64); files.len()]);
    let report = |index: usize, event: DownloadEvent| {
        let name = files[index].relative_path;
        let mut progress = progress.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (transfer, shown) = &mut progress[index];
        transfer.follow(&event, Instant::now());
        match event {
            DownloadEvent::Started { total, done, from_cache } => {
                *shown = done * 10 / total.max(1);
                let from = if from_cache {
                    "from the Hugging Face cache"
                } else if done > 0 {
                    "resuming"
                } else {
                    "downloading"
                };
                eprintln!("{name}: {from}, {} of {}", check::human_bytes(done), check::human_bytes(total));
            }
            DownloadEvent::Progress { done } => {
                let tenth = done * 10 / transfer.total.max(1);
                if tenth > *shown {
                    *shown = tenth;
                    let speed = transfer.bytes_per_second().map(|s| format!(", {}/s", check::human_bytes(s as u64))).unwrap_or_default();
                    let left = transfer.time_left().map(|d| format!(", {:.0} s left", d.as_secs_f64())).unwrap_or_default();
                    eprintln!("{name}: {}%{speed}{left}", tenth * 10);
                }
            }
            DownloadEvent::Retrying { message } => eprintln!("{name}: {message}; trying again"),
            DownloadEvent::Finished => eprintln!("{name}: done, verified"),
            DownloadEvent::AlreadyPresent => eprintln!("{name}: already there"),
            DownloadEvent::Failed { message } => eprintln!("{name}: FAILED: {message}"),
            DownloadEvent::Cancelled => eprintln!("{name}: cancelled"),
        }
    };
    let summary = download::download_all(models, &files, &hub, options, &AtomicBool::new(false), &report);
    if let Some(message) = &summary.unreachable {
        eprintln!("{message}");
    }
    let mut runtime_failed = false;
    if only.is_empty() && face::runtime::find_library().is_none() {
        eprintln!("ONNX Runtime {}: not found; fetching it", face::runtime::ONNXRUNTIME_VERSION);
        match install_runtime(&hub) {
            Ok(path) => eprintln!("ONNX Runtime {}: {}", face::runtime::ONNXRUNTIME_VERSION, path.display()),
            Err(e) => {
                eprintln!("ONNX Runtime: FAILED: {e}");
                runtime_failed = true;
            }
        }
    }
    if summary.failed > 0 {
        bail!("{} of {} files failed; run the same command again to resume", summary.failed, files.len());
    }
    if runtime_failed {
        bail!("ONNX Runtime could not be fetched; run the same command again, or set ORT_DYLIB_PATH");
    }
    Ok(())
}

/// Fetches the pinned ONNX Runtime library from PyPI into the app's data folder.
fn install_runtime(hub: &Hub) -> anyhow::Result<PathBuf> {
    let library = models::onnxruntime::pinned()
        .context("no pinned ONNX Runtime for this platform; set ORT_DYLIB_PATH to an ONNX Runtime 1.31.1 library")?;
    let dir = face::runtime::install_dir().context("no data folder for the app on this system")?;
    let report = |event: DownloadEvent| {
        if let DownloadEvent::Started { total, .. } = event {
            eprintln!("onnxruntime wheel: downloading {}", check::human_bytes(total));
        }
    };
    Ok(models::onnxruntime::install(&dir, &models::onnxruntime::index_url(), &library, hub, &AtomicBool::new(false), &report)?)
}

fn load_face_analyzer(models: &Path) -> anyhow::Result<FaceAnalyzer> {
    let analyzer = FaceAnalyzer::load(&ModelsDir::new(models))?;
    if let Ok(runtime) = face::runtime::runtime() {
        eprintln!("face analysis: ONNX Runtime {} ({})", runtime.library.display(), runtime.provider);
    }
    Ok(analyzer)
}

fn faces(args: FacesArgs) -> anyhow::Result<()> {
    let photo = face::photo::load_photo(&args.photo)?;
    let faces = load_face_analyzer(&args.models)?.analyze(&photo, args.det_size)?;
    eprintln!("{}: {} face(s)", args.photo.display(), faces.len());
    println!("{}", serde_json::to_string(&faces)?);
    Ok(())
}

/// A photo and the faces found in it, kept so that a photo given twice (`--photo` and
/// `--reference`) is analysed once.
struct Analysed {
    path: PathBuf,
    photo: image::RgbImage,
    faces: Vec<face::Face>,
}

/// The photo at `path` and its faces, analysed now unless `analysed` has it.
fn analyse<'a>(models: &Path, path: &Path, det_size: usize, analysed: &'a mut Vec<Analysed>) -> anyhow::Result<&'a Analysed> {
    let index = match analysed.iter().position(|a| a.path == path) {
        Some(index) => index,
        None => {
            // The models first: a missing one is the thing to fix before any photo.
            let mut analyzer = load_face_analyzer(models)?;
            let photo = face::photo::load_photo(path)?;
            let faces = analyzer.analyze(&photo, det_size)?;
            analysed.push(Analysed { path: path.to_path_buf(), photo, faces });
            analysed.len() - 1
        }
    };
    Ok(&analysed[index])
}

/// Face `chosen` of `analysed` (default the largest), with its number; `flag` names the option
/// that chose it, for messages.
fn chosen_face<'a>(analysed: &'a Analysed, chosen: Option<usize>, flag: &str) -> anyhow::Result<(usize, &'a face::Face)> {
    let Some(largest) = face::largest_face(&analysed.faces) else {
        bail!("{}: no face found; try a photo with more margin around the face", analysed.path.display());
    };
    let index = chosen.unwrap_or(largest);
    match analysed.faces.get(index) {
        Some(face) => Ok((index, face)),
        None => bail!("{}: {flag} {index} but the photo has {} face(s), numbered from 0", analysed.path.display(), analysed.faces.len()),
    }
}

/// The identity of the chosen face (default the largest) of each photo, combined into one; the
/// spec records which faces they were.
fn identity_from_photos(args: &GenerateArgs, spec: &mut GenerationSpec, analysed: &mut Vec<Analysed>) -> anyhow::Result<Vec<f32>> {
    if args.face.is_some() && args.photo.len() > 1 {
        bail!("--face picks a face of a single photo; with several photos the largest face of each is used");
    }
    let mut embeddings = Vec::new();
    let mut faces_used = Vec::new();
    for path in &args.photo {
        let photo = analyse(&args.models, path, args.det_size, analysed)?;
        let (index, face) = chosen_face(photo, args.face, "--face")?;
        embeddings.push(face.embedding.clone());
        faces_used.push(FaceRef { photo: crate::file_name(path), face: index });
    }
    spec.identity = IdentitySource::Faces { faces: faces_used };
    Ok(face::mean_identity(&embeddings))
}

/// The Reference Adapter's photo at `size`: FFHQ-aligned on its chosen face, or only resized
/// when it is already aligned; with the face it was aligned on.
fn reference_photo(
    args: &GenerateArgs,
    path: &Path,
    size: usize,
    analysed: &mut Vec<Analysed>,
) -> anyhow::Result<(image::RgbImage, Option<usize>)> {
    if args.reference_aligned {
        let photo = face::photo::load_photo(path)?;
        return Ok((face::resize::bilinear(&photo, size, size), None));
    }
    let photo = analyse(&args.models, path, args.det_size, analysed)?;
    let (index, face) = chosen_face(photo, args.reference_face, "--reference-face")?;
    let aligned = face::align::ffhq_crop(&photo.photo, &face.kps, size as u32)
        .with_context(|| format!("{}: face {index}'s keypoints cannot be aligned", path.display()))?;
    Ok((aligned, Some(index)))
}

/// A raw identity vector from a `.npy` of shape (D,) or (1, D): finite, not zero, and as long
/// as the recognizer's output when the models folder has one (a vector of another length is not
/// an Arc2Face identity).
fn read_identity(path: &Path, models: &ModelsDir) -> anyhow::Result<Vec<f32>> {
    let tensor = Tensor::read_npy(path).with_context(|| format!("{}: not a readable .npy file", path.display()))?;
    let vector = match tensor.dims() {
        [_] => tensor,
        [1, _] => tensor.squeeze(0)?,
        dims => bail!("{}: expected an identity vector of shape (D,) or (1, D), got {dims:?}", path.display()),
    };
    let vector: Vec<f32> = vector.to_dtype(DType::F32)?.to_vec1()?;
    if vector.iter().any(|v| !v.is_finite()) {
        bail!("{}: the identity vector holds values that are not finite", path.display());
    }
    if vector.iter().all(|&v| v == 0.0) {
        bail!("{}: the identity vector is all zeros", path.display());
    }
    if let Some(expected) = face::recognizer_output_len(models)
        && vector.len() != expected
    {
        bail!(
            "{}: {} values, but the recognizer (arcface.onnx) gives {expected}: not an ArcFace identity of these models",
            path.display(),
            vector.len()
        );
    }
    Ok(vector)
}

/// Initial latents from a `.npy` of shape (N, C, h, w).
fn read_noise(path: &Path) -> anyhow::Result<Tensor> {
    let tensor = Tensor::read_npy(path).with_context(|| format!("{}: not a readable .npy file", path.display()))?;
    if tensor.rank() != 4 {
        bail!("{}: expected latents of shape (N, C, h, w), got {:?}", path.display(), tensor.dims());
    }
    Ok(tensor.to_dtype(DType::F32)?)
}
