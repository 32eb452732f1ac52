//! Photos as users drop them: formats, alpha, 16-bit, and bad files that must give a clear
//! error rather than a crash or an out-of-memory.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::path::Path;

use arc2face_studio::face::photo::{PhotoError, load_photo};
use image::{ImageBuffer, Rgb, Rgba};

/// A small valid PNG whose header then claims `width`×`height`, as a hostile file would.
fn write_png_claiming(path: &Path, width: u32, height: u32) {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= byte as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    ImageBuffer::from_pixel(32, 32, Rgb([9u8, 9, 9])).save(path).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    // Signature (8), then the IHDR chunk: length (4), type (4), width (4), height (4), …, CRC.
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn common_formats_alpha_and_16_bit_load_as_8_bit_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let rgba = ImageBuffer::from_fn(40, 30, |x, y| Rgba([x as u8 * 6, y as u8 * 8, 100, 7]));
    for name in ["a.png", "a.bmp", "a.tiff", "a.webp"] {
        let path = dir.path().join(name);
        rgba.save(&path).unwrap();
        let photo = load_photo(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(photo.dimensions(), (40, 30), "{name}");
        assert_eq!(photo.get_pixel(5, 3).0, [30, 24, 100], "{name}: alpha dropped, colours kept");
    }
    let jpeg = dir.path().join("a.jpg");
    image::DynamicImage::ImageRgba8(rgba).to_rgb8().save(&jpeg).unwrap();
    assert_eq!(load_photo(&jpeg).unwrap().dimensions(), (40, 30));

    let deep = ImageBuffer::from_fn(20, 20, |_, _| Rgb([65535u16, 32768, 0]));
    let path = dir.path().join("deep.png");
    deep.save(&path).unwrap();
    assert_eq!(load_photo(&path).unwrap().get_pixel(0, 0).0, [255, 128, 0]);
}

#[test]
fn bad_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, "this is not an image").unwrap();
    assert!(matches!(load_photo(&text), Err(PhotoError::UnknownFormat { .. })));

    let missing = dir.path().join("missing.png");
    assert!(matches!(load_photo(&missing), Err(PhotoError::Unreadable { .. })));

    let tiny = dir.path().join("tiny.png");
    ImageBuffer::from_pixel(1, 1, Rgb([0u8, 0, 0])).save(&tiny).unwrap();
    let error = load_photo(&tiny).unwrap_err();
    assert!(matches!(error, PhotoError::TooSmall { .. }) && error.to_string().contains("1×1"), "{error}");

    let huge = dir.path().join("huge.png");
    write_png_claiming(&huge, 20_000, 20_000);
    let error = load_photo(&huge).unwrap_err();
    assert!(matches!(error, PhotoError::TooLarge { .. }) && error.to_string().contains("20000×20000"), "{error}");

    let truncated = dir.path().join("truncated.png");
    ImageBuffer::from_fn(64, 64, |x, y| Rgb([x as u8, y as u8, 0])).save(&truncated).unwrap();
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let error = load_photo(&truncated).unwrap_err();
    assert!(matches!(error, PhotoError::Damaged { .. }), "{error}");
    assert!(error.to_string().starts_with(&truncated.display().to_string()), "names the file: {error}");
}
