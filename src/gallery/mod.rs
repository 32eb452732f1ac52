//! Finished images on disk: PNG files that carry their generation parameters, and the gallery
//! that keeps them across runs.

pub mod history;
pub mod metadata;
pub mod sheet;
