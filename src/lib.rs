//! Arc2Face Studio: new photos of a person from one photo of them.
//!
//! See ARCHITECTURE.md for the threads, the modules and how data flows between them.

pub mod app;
pub mod cli;
pub mod diffusion;
pub mod engine;
pub mod expression;
pub mod face;
pub mod gallery;
pub mod models;
pub mod pose;
pub mod worker;

/// A path's last component, for messages and metadata (which never record folders).
pub fn file_name(path: &std::path::Path) -> String {
    path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Milliseconds since the Unix epoch; a clock set before 1970 gives 0 rather than failing.
pub fn unix_ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The app's data folder (models, the gallery, ONNX Runtime): `~/.local/share/arc2face-studio`
/// on Linux; `None` where the system has no home folder.
pub fn data_dir() -> Option<std::path::PathBuf> {
    directories::ProjectDirs::from("", "", "arc2face-studio").map(|dirs| dirs.data_dir().to_path_buf())
}

/// The Euclidean length of a vector.
pub fn l2_norm(values: &[f32]) -> f32 {
    values.iter().map(|v| v * v).sum::<f32>().sqrt()
}
