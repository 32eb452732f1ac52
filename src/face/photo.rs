//! Reading a photo the way a user drops it: any common format, EXIF orientation applied, alpha
//! dropped, 16-bit reduced to 8, and a clear error for anything that is not a usable photo.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

/// Larger photos are refused before decoding: a header can claim any size.
pub const MAX_SIDE: u32 = 12_000;
/// The most memory one decode may take.
const MAX_DECODE_BYTES: u64 = 1 << 30;
/// Smaller photos cannot hold a face the detector can see.
pub const MIN_SIDE: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum PhotoError {
    // Not `source`: the message already says it, and error chains would say it twice.
    #[error("{}: {error}", path.display())]
    Unreadable { path: PathBuf, error: std::io::Error },
    #[error("{}: not an image in a format we read (JPEG, PNG, WebP, BMP, TIFF)", path.display())]
    UnknownFormat { path: PathBuf },
    #[error("{}: {width}×{height} is too large (at most {MAX_SIDE} px a side)", path.display())]
    TooLarge { path: PathBuf, width: u32, height: u32 },
    #[error("{}: {width}×{height} is too small to hold a face", path.display())]
    TooSmall { path: PathBuf, width: u32, height: u32 },
    #[error("{}: damaged or unsupported image: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
}

/// Loads a photo as upright 8-bit RGB.
pub fn load_photo(path: &Path) -> Result<RgbImage, PhotoError> {
    let damaged = |e: image::ImageError| PhotoError::Damaged { path: path.to_path_buf(), reason: e.to_string() };
    let bytes = std::fs::read(path).map_err(|error| PhotoError::Unreadable { path: path.to_path_buf(), error })?;
    // The content decides the format, not the file name.
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|error| PhotoError::Unreadable { path: path.to_path_buf(), error })?;
    if reader.format().is_none() {
        return Err(PhotoError::UnknownFormat { path: path.to_path_buf() });
    }
    let mut decoder = reader.into_decoder().map_err(damaged)?;
    let (width, height) = decoder.dimensions();
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(PhotoError::TooLarge { path: path.to_path_buf(), width, height });
    }
    if width < MIN_SIDE || height < MIN_SIDE {
        return Err(PhotoError::TooSmall { path: path.to_path_buf(), width, height });
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    decoder.set_limits(limits).map_err(damaged)?;
    let orientation = decoder.orientation().map_err(damaged)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(damaged)?;
    image.apply_orientation(orientation);
    Ok(image.to_rgb8())
}
