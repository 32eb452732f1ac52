//! Gallery images are decoded on a thread of their own: a history of hundreds of PNGs would
//! otherwise cost the UI thread several milliseconds per image at start.

use std::path::PathBuf;

use crossbeam_channel::{Receiver, Sender};
use image::RgbImage;

pub struct ThumbnailLoader {
    requests: Sender<(u64, PathBuf)>,
    decoded: Receiver<(u64, RgbImage)>,
}

impl ThumbnailLoader {
    /// `wake` repaints the UI after each decoded image.
    pub fn spawn(wake: impl Fn() + Send + 'static) -> Self {
        let (requests, incoming) = crossbeam_channel::unbounded::<(u64, PathBuf)>();
        let (outgoing, decoded) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("thumbnails".into())
            .spawn(move || {
                for (id, path) in incoming {
                    let image = match image::open(&path) {
                        Ok(image) => image.to_rgb8(),
                        // An unreadable file shows a grey square rather than being retried.
                        Err(_) => RgbImage::from_pixel(8, 8, image::Rgb([60, 60, 60])),
                    };
                    if outgoing.send((id, image)).is_err() {
                        break;
                    }
                    wake();
                }
            })
            .expect("the thumbnail thread starts");
        Self { requests, decoded }
    }

    pub fn request(&self, id: u64, path: PathBuf) {
        let _ = self.requests.send((id, path));
    }

    pub fn try_recv(&self) -> Option<(u64, RgbImage)> {
        self.decoded.try_recv().ok()
    }
}
