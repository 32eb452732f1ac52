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
