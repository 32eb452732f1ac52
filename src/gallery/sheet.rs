//! Contact sheets: the images of a sweep side by side in one picture, in sweep order.

use image::RgbImage;

/// The gap between images, in pixels, in the sheet's background grey.
const GAP: u32 = 8;
const BACKGROUND: image::Rgb<u8> = image::Rgb([32, 32, 32]);

/// `images` in rows of at most `per_row`, each cell the size of the largest image.
pub fn contact_sheet(images: &[RgbImage], per_row: usize) -> RgbImage {
    let per_row = per_row.clamp(1, images.len().max(1)) as u32;
    let rows = (images.len() as u32).div_ceil(per_row).max(1);
    let cell_w = images.iter().map(RgbImage::width).max().unwrap_or(1);
    let cell_h = images.iter().map(RgbImage::height).max().unwrap_or(1);
    let mut sheet = RgbImage::from_pixel(per_row * (cell_w + GAP) + GAP, rows * (cell_h + GAP) + GAP, BACKGROUND);
    for (i, image) in images.iter().enumerate() {
        let (column, row) = (i as u32 % per_row, i as u32 / per_row);
        let (x, y) = (GAP + column * (cell_w + GAP), GAP + row * (cell_h + GAP));
        image::imageops::replace(&mut sheet, image, x as i64, y as i64);
    }
    sheet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_sit_in_order_in_rows() {
        let images: Vec<RgbImage> = (0..5).map(|i| RgbImage::from_pixel(4, 4, image::Rgb([i * 50, 0, 0]))).collect();
        let sheet = contact_sheet(&images, 3);
        assert_eq!((sheet.width(), sheet.height()), (3 * 12 + 8, 2 * 12 + 8));
        assert_eq!(sheet.get_pixel(8, 8).0, [0, 0, 0]);
        assert_eq!(sheet.get_pixel(8 + 12, 8).0, [50, 0, 0]);
        assert_eq!(sheet.get_pixel(8 + 12, 8 + 12).0, [200, 0, 0]);
        assert_eq!(sheet.get_pixel(8 + 24, 8 + 12).0, BACKGROUND.0, "no sixth image");
    }
}
