//! Generation metadata written into each PNG: an A1111-style `parameters` text chunk that other
//! tools show, and an `arc2face` JSON chunk with everything needed to reproduce the image. The
//! identity vector itself is never written: it is biometric data.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::engine::LoadedFile;

/// The `tEXt` keyword A1111, ComfyUI and image viewers read.
pub const PARAMETERS_KEY: &str = "parameters";
/// The `iTXt` keyword of our JSON record.
pub const JSON_KEY: &str = "arc2face";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenerationMetadata {
    pub app: String,
    pub app_version: String,
    /// The seed that regenerates this image alone; absent when the initial noise was given.
    pub seed: Option<u64>,
    pub steps: usize,
    pub guidance: f64,
    pub width: usize,
    pub height: usize,
    pub scheduler: String,
    /// Where the identity came from (a file name), never the vector.
    pub identity_source: String,
    pub model_files: Vec<ModelFileRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelFileRecord {
    pub path: String,
    pub bytes: u64,
}

impl From<&LoadedFile> for ModelFileRecord {
    fn from(file: &LoadedFile) -> Self {
        Self { path: file.path.clone(), bytes: file.bytes }
    }
}

pub const SCHEDULER_NAME: &str = "DPM++ 2M (DPMSolverMultistep, dpmsolver++, order 2, linspace)";

impl GenerationMetadata {
    /// The A1111-style one-paragraph summary.
    pub fn parameters_text(&self) -> String {
        let seed = self.seed.map_or_else(|| "given noise".to_string(), |s| s.to_string());
        format!(
            "Arc2Face identity portrait\nSteps: {}, Sampler: DPM++ 2M, CFG scale: {}, Seed: {}, Size: {}x{}, Model: arc2face, Version: {} {}",
            self.steps, self.guidance, seed, self.width, self.height, self.app, self.app_version
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[error("could not write {}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Writes `image` as a PNG with its metadata into `dir`, named `stem.png` or, when that exists,
/// `stem-2.png`, `stem-3.png`…; never overwrites. The file appears whole or not at all: it is
/// written and synced under a temporary name, then linked under the first free final name (a
/// hard link fails rather than replace an existing file, so two writers never collide).
pub fn write_png(dir: &Path, stem: &str, image: &RgbImage, metadata: &GenerationMetadata) -> Result<PathBuf, WriteError> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WriteError { path, source }
    };
    std::fs::create_dir_all(dir).map_err(error(dir))?;
    let bytes = encode_png(image, metadata).map_err(error(dir))?;
    let temporary = dir.join(format!(".{stem}.{}-{}.part", std::process::id(), WRITES.fetch_add(1, Ordering::Relaxed)));
    let written = std::fs::File::create(&temporary)
        .and_then(|mut file| file.write_all(&bytes).and_then(|_| file.sync_all()))
        .and_then(|_| link_under_free_name(&temporary, dir, &format!("{stem}.png")));
    let _ = std::fs::remove_file(&temporary);
    written.map_err(error(&dir.join(format!("{stem}.png"))))
}

/// Gives `file` the first free name among `file_name`, `stem-2.ext`, `stem-3.ext`… in `dir`
/// (on the same filesystem) and returns it; `file` keeps its own name too, for the caller to
/// remove. A hard link fails rather than replace an existing file, so two writers never collide.
pub(crate) fn link_under_free_name(file: &Path, dir: &Path, file_name: &str) -> std::io::Result<PathBuf> {
    let name = Path::new(file_name);
    let stem = name.file_stem().map_or_else(|| file_name.into(), |s| s.to_string_lossy());
    let ext = name.extension().map_or_else(String::new, |e| format!(".{}", e.to_string_lossy()));
    for n in 1.. {
        let path = dir.join(if n == 1 { file_name.to_string() } else { format!("{stem}-{n}{ext}") });
        match std::fs::hard_link(file, &path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            // Filesystems without hard links (FAT): a copy under a name checked to be free.
            Err(_) if !path.exists() => return std::fs::copy(file, &path).map(|_| path),
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns")
}

fn encode_png(image: &RgbImage, metadata: &GenerationMetadata) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, image.width(), image.height());
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let json = serde_json::to_string(metadata).map_err(std::io::Error::other)?;
    encoder.add_text_chunk(PARAMETERS_KEY.into(), metadata.parameters_text()).map_err(std::io::Error::other)?;
    encoder.add_itxt_chunk(JSON_KEY.into(), json).map_err(std::io::Error::other)?;
    let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
    writer.write_image_data(image.as_raw()).map_err(std::io::Error::other)?;
    writer.finish().map_err(std::io::Error::other)?;
    Ok(bytes)
}

/// Reads the metadata back from a PNG written by [`write_png`]; `None` when it has none.
pub fn read_metadata(path: &Path) -> std::io::Result<Option<GenerationMetadata>> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path)?));
    let reader = decoder.read_info().map_err(std::io::Error::other)?;
    let json = reader.info().utf8_text.iter().find(|chunk| chunk.keyword == JSON_KEY);
    match json {
        None => Ok(None),
        Some(chunk) => {
            let text = chunk.get_text().map_err(std::io::Error::other)?;
            serde_json::from_str(&text).map(Some).map_err(std::io::Error::other)
        }
    }
}
