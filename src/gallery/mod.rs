//! Finished images on disk: PNG files that carry their generation parameters.

pub mod metadata;
