//! Generation metadata written into each PNG: an A1111-style `parameters` text chunk that other
//! tools show, and an `arc2face` JSON chunk with everything needed to reproduce the image. The
//! identity vector itself is never written: it is biometric data.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use image::RgbImage;
use serde::Deserialize;

use crate::engine::{GenerationSpec, IdentitySource, ImageMetadata, LoadedFile, spec::METADATA_FORMAT};

/// The `tEXt` keyword A1111, ComfyUI and image viewers read.
pub const PARAMETERS_KEY: &str = "parameters";
/// The `iTXt` keyword of our JSON record.
pub const JSON_KEY: &str = "arc2face";
/// The `iTXt` keyword of what the gallery adds about an image ([`GalleryRecord`]).
pub const GALLERY_KEY: &str = "arc2face-gallery";

/// What the gallery records in an image's own PNG, so that a rebuilt index keeps it: the
/// image's gallery id and whether it is a favourite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct GalleryRecord {
    pub id: u64,
    pub favourite: bool,
}

/// The A1111-style one-paragraph summary other tools show.
pub fn parameters_text(metadata: &ImageMetadata) -> String {
    let spec = &metadata.spec;
    let seed = spec.seed.map_or_else(|| "given noise".to_string(), |s| s.to_string());
    format!(
        "Arc2Face identity portrait\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: arc2face, Version: {} {}",
        spec.steps,
        spec.sampler.label(),
        spec.guidance,
        seed,
        metadata.width,
        metadata.height,
        metadata.app,
        metadata.app_version
    )
}

/// The name (without `.png`) an image is written under, in the gallery and by the CLI alike:
/// `arc2face-seed<S>`, or `arc2face-noise<i>` when it started from given latents.
pub fn file_stem(metadata: &ImageMetadata) -> String {
    match metadata.spec.seed {
        Some(seed) => format!("arc2face-seed{seed}"),
        None => format!("arc2face-noise{}", metadata.index),
    }
}

/// The flat record version 0.1.0 wrote; read so that its PNGs and galleries keep loading.
#[derive(Deserialize)]
pub(crate) struct MetadataV1 {
    app: String,
    app_version: String,
    seed: Option<u64>,
    steps: usize,
    guidance: f64,
    width: usize,
    height: usize,
    identity_source: String,
    model_files: Vec<LoadedFile>,
}

impl From<MetadataV1> for ImageMetadata {
    fn from(old: MetadataV1) -> Self {
        ImageMetadata {
            format: METADATA_FORMAT,
            app: old.app,
            app_version: old.app_version,
            spec: GenerationSpec {
                identity: IdentitySource::from_legacy_text(&old.identity_source),
                num_images: 1,
                seed: old.seed,
                steps: old.steps,
                guidance: old.guidance,
                size: Some(old.width),
                ..Default::default()
            },
            index: 0,
            count: 1,
            job: 0,
            sweep: None,
            width: old.width,
            height: old.height,
            ran_on: "unknown".into(),
            model_files: old.model_files,
            created_unix_ms: 0,
            identity_match: None,
        }
    }
}

/// Either layout, as a PNG or a gallery index holds it.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum StoredMetadata {
    Current(Box<ImageMetadata>),
    V1(MetadataV1),
}

impl From<StoredMetadata> for ImageMetadata {
    fn from(stored: StoredMetadata) -> Self {
        match stored {
            StoredMetadata::Current(metadata) => *metadata,
            StoredMetadata::V1(old) => old.into(),
        }
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
pub fn write_png(dir: &Path, stem: &str, image: &RgbImage, metadata: &ImageMetadata) -> Result<PathBuf, WriteError> {
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

fn encode_png(image: &RgbImage, metadata: &ImageMetadata) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, image.width(), image.height());
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let json = serde_json::to_string(metadata).map_err(std::io::Error::other)?;
    encoder.add_text_chunk(PARAMETERS_KEY.into(), parameters_text(metadata)).map_err(std::io::Error::other)?;
    encoder.add_itxt_chunk(JSON_KEY.into(), json).map_err(std::io::Error::other)?;
    let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
    writer.write_image_data(image.as_raw()).map_err(std::io::Error::other)?;
    writer.finish().map_err(std::io::Error::other)?;
    Ok(bytes)
}

/// Reads the metadata back from a PNG written by [`write_png`] (or by version 0.1.0); `None`
/// when it has none.
pub fn read_metadata(path: &Path) -> std::io::Result<Option<ImageMetadata>> {
    Ok(read_records(path)?.0)
}

/// The image's metadata and the gallery's record of it, each when the PNG has one.
pub fn read_records(path: &Path) -> std::io::Result<(Option<ImageMetadata>, Option<GalleryRecord>)> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path)?));
    let reader = decoder.read_info().map_err(std::io::Error::other)?;
    let text = |key: &str| -> std::io::Result<Option<String>> {
        match reader.info().utf8_text.iter().find(|chunk| chunk.keyword == key) {
            Some(chunk) => chunk.get_text().map(Some).map_err(std::io::Error::other),
            None => Ok(None),
        }
    };
    let metadata = match text(JSON_KEY)? {
        Some(json) => Some(serde_json::from_str::<StoredMetadata>(&json).map_err(std::io::Error::other)?.into()),
        None => None,
    };
    // A damaged record only loses the gallery's additions, never the image.
    let record = text(GALLERY_KEY)?.and_then(|json| serde_json::from_str(&json).ok());
    Ok((metadata, record))
}

/// Writes `record` into the PNG at `path` in place of the one it holds, without touching its
/// pixels: the file is rewritten chunk by chunk under a temporary name, synced, and renamed over.
pub fn write_gallery_record(path: &Path, record: &GalleryRecord) -> std::io::Result<()> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    let bytes = std::fs::read(path)?;
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: not a PNG file", path.display()));
    if !bytes.starts_with(SIGNATURE) {
        return Err(invalid());
    }
    let json = serde_json::to_string(record).map_err(std::io::Error::other)?;
    // iTXt: keyword, NUL, not compressed (0, 0), empty language tag and translated keyword.
    let ours = [GALLERY_KEY.as_bytes(), b"\0\0\0\0\0", json.as_bytes()].concat();
    let mut out = Vec::with_capacity(bytes.len() + ours.len() + 12);
    out.extend_from_slice(SIGNATURE);
    // Ours goes before the image data, where readers that stop at the pixels still see it.
    let mut at = SIGNATURE.len();
    let mut placed = false;
    loop {
        let header = bytes.get(at..at + 8).ok_or_else(invalid)?;
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let (kind, end) = (&header[4..8], at + 12 + length);
        let chunk = bytes.get(at..end).ok_or_else(invalid)?;
        let data = &chunk[8..8 + length];
        let is_ours = kind == b"iTXt" && data.starts_with(GALLERY_KEY.as_bytes()) && data.get(GALLERY_KEY.len()) == Some(&0);
        if (kind == b"IDAT" || kind == b"IEND") && !placed {
            push_chunk(&mut out, b"iTXt", &ours);
            placed = true;
        }
        if !is_ours {
            out.extend_from_slice(chunk);
        }
        at = end;
        if kind == b"IEND" {
            break;
        }
    }
    let temporary = path.with_extension("png.record");
    let written = std::fs::File::create(&temporary)
        .and_then(|mut file| file.write_all(&out).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

fn push_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}
