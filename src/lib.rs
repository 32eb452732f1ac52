//! Arc2Face Studio: new photos of a person from one photo of them.
//!
//! See ARCHITECTURE.md for the threads, the modules and how data flows between them.

pub mod app;
pub mod cli;
pub mod diffusion;
pub mod engine;
pub mod face;
pub mod gallery;
pub mod models;
pub mod worker;

/// A path's last component, for messages and metadata (which never record folders).
pub fn file_name(path: &std::path::Path) -> String {
    path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default()
}
