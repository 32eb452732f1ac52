//! Gallery images are decoded on a thread of their own: a history of hundreds of PNGs would
//! otherwise cost the UI thread several milliseconds per image. The strip shows downscaled
//! copies (a 512² image in full is 1 MB of GPU memory); full size is decoded when an image is
//! opened large.

use std::path::PathBuf;

use crossbeam_channel::{Receiver, Sender};
use image::RgbImage;

/// The longest side of a thumbnail: the strip shows them at 128 points, sharp on 2× screens.
pub const THUMBNAIL_SIDE: u32 = 256;

/// Which copy of an image is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Size {
    Thumbnail,
    Full,
}

/// Requests waiting at most; the UI asks again next frame when they are all taken.
const QUEUE: usize = 64;

pub struct ThumbnailLoader {
    requests: Sender<(u64, PathBuf, Size)>,
    decoded: Receiver<(u64, Size, RgbImage)>,
}

impl ThumbnailLoader {
    /// `wake` repaints the UI after each decoded image.
    pub fn spawn(wake: impl Fn() + Send + 'static) -> std::io::Result<Self> {
        let (requests, incoming) = crossbeam_channel::bounded::<(u64, PathBuf, Size)>(QUEUE);
        let (outgoing, decoded) = crossbeam_channel::bounded(QUEUE);
        std::thread::Builder::new().name("thumbnails".into()).spawn(move || {
            for (id, path, size) in incoming {
                let image = match image::open(&path) {
                    Ok(image) if size == Size::Thumbnail => downscale(&image.to_rgb8()),
                    Ok(image) => image.to_rgb8(),
                    // An unreadable file shows a grey square rather than being retried.
                    Err(_) => RgbImage::from_pixel(8, 8, image::Rgb([60, 60, 60])),
                };
                if outgoing.send((id, size, image)).is_err() {
                    break;
                }
                wake();
            }
        })?;
        Ok(Self { requests, decoded })
    }

    /// `false` when the queue is full: ask again later.
    pub fn request(&self, id: u64, path: PathBuf, size: Size) -> bool {
        self.requests.try_send((id, path, size)).is_ok()
    }

    pub fn try_recv(&self) -> Option<(u64, Size, RgbImage)> {
        self.decoded.try_recv().ok()
    }
}

/// A copy no larger than [`THUMBNAIL_SIDE`] on its longest side.
pub fn downscale(image: &RgbImage) -> RgbImage {
    let longest = image.width().max(image.height());
    if longest <= THUMBNAIL_SIDE {
        return image.clone();
    }
    let scale = THUMBNAIL_SIDE as f32 / longest as f32;
    let (width, height) = (((image.width() as f32 * scale).round() as u32).max(1), ((image.height() as f32 * scale).round() as u32).max(1));
    image::imageops::thumbnail(image, width, height)
}
