//! The persistent gallery: what survives a reopen, remove and undo, export, and the damage a crash
//! or a person can do to the folder between runs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::path::Path;

use arc2face_studio::engine::{GenerationSpec, IdentitySource, ImageMetadata, LoadedFile};
use arc2face_studio::gallery::history::{Gallery, GalleryError, SortOrder};
use arc2face_studio::gallery::metadata;
use image::{Rgb, RgbImage};

fn meta(seed: Option<u64>) -> ImageMetadata {
    ImageMetadata {
        format: 2,
        app: "arc2face-studio".into(),
        app_version: "0.2.0".into(),
        spec: GenerationSpec {
            identity: IdentitySource::Embedding { file: "alice.npy".into() },
            num_images: 1,
            seed,
            size: Some(8),
            ..Default::default()
        },
        index: 0,
        count: 1,
        job: 0,
        sweep: None,
        width: 8,
        height: 8,
        ran_on: "CPU, f32".into(),
        model_files: vec![LoadedFile { path: "unet/diffusion_pytorch_model.safetensors".into(), bytes: 1234 }],
        // All made "at once": ties are ordered by id.
        created_unix_ms: 1_700_000_000_000,
        identity_match: None,
    }
}

fn scored(metadata: ImageMetadata, identity_match: Option<f32>) -> ImageMetadata {
    ImageMetadata { identity_match, ..metadata }
}

fn image(shade: u8) -> RgbImage {
    RgbImage::from_pixel(8, 8, Rgb([shade, 255 - shade, 7]))
}

fn ids(gallery: &Gallery) -> Vec<u64> {
    gallery.entries().iter().map(|entry| entry.id).collect()
}

fn index_path(dir: &Path) -> std::path::PathBuf {
    dir.join("gallery.json")
}

/// A gallery with three images: seeds 1 and 2, and one made from given noise (no seed).
fn three(dir: &Path) -> Gallery {
    let mut gallery = Gallery::open(dir).unwrap();
    gallery.add(&image(10), scored(meta(Some(1)), Some(0.5))).unwrap();
    gallery.add(&image(20), scored(meta(Some(2)), None)).unwrap();
    gallery.add(&image(30), scored(meta(None), Some(0.8))).unwrap();
    gallery
}

#[test]
fn open_creates_a_missing_folder_and_starts_empty() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data").join("gallery");
    let gallery = Gallery::open(&dir).unwrap();
    assert!(dir.is_dir());
    assert!(gallery.entries().is_empty());
    assert_eq!(gallery.dir(), dir);
}

#[test]
fn add_and_reopen_keeps_ids_order_favourites_and_matches() {
    let root = tempfile::tempdir().unwrap();
    let mut gallery = three(root.path());
    assert_eq!(ids(&gallery), [1, 2, 3]);
    let names: Vec<&str> = gallery.entries().iter().map(|e| e.file_name.as_str()).collect();
    assert_eq!(names, ["arc2face-seed1.png", "arc2face-seed2.png", "arc2face-noise0.png"]);
    gallery.set_favourite(2, true).unwrap();
    let before = gallery.entries().to_vec();
    for entry in &before {
        assert_eq!(metadata::read_metadata(&gallery.path(entry)).unwrap().as_ref(), Some(&entry.metadata));
    }

    let reopened = Gallery::open(root.path()).unwrap();
    assert_eq!(reopened.entries(), &before[..]);
    assert!(reopened.get(2).unwrap().favourite);
    assert_eq!(reopened.get(3).unwrap().metadata.identity_match, Some(0.8));
    assert!(reopened.get(4).is_none());

    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(index_path(root.path())).unwrap()).unwrap();
    assert_eq!(index["version"], 2);
    assert_eq!(index["next_id"], 4);
    assert!(!root.path().join("gallery.json.tmp").exists());
}

#[test]
fn the_same_seed_twice_gets_two_files() {
    let root = tempfile::tempdir().unwrap();
    let mut gallery = Gallery::open(root.path()).unwrap();
    gallery.add(&image(1), scored(meta(Some(7)), None)).unwrap();
    let second = gallery.add(&image(2), scored(meta(Some(7)), None)).unwrap();
    assert_eq!(second.file_name, "arc2face-seed7-2.png");
}

#[test]
fn ids_are_never_reused_after_removes_and_reopens() {
    let root = tempfile::tempdir().unwrap();
    let mut gallery = three(root.path());
    gallery.remove(&[3]).unwrap();
    assert_eq!(gallery.add(&image(40), scored(meta(Some(4)), None)).unwrap().id, 4);
    gallery.remove(&[4]).unwrap();
    let mut gallery = Gallery::open(root.path()).unwrap();
    assert_eq!(ids(&gallery), [1, 2]);
    assert_eq!(gallery.add(&image(50), scored(meta(Some(5)), None)).unwrap().id, 5);
}

#[test]
fn sort_orders() {
    let root = tempfile::tempdir().unwrap();
    let mut gallery = three(root.path());
    gallery.add(&image(40), scored(meta(Some(4)), Some(0.5))).unwrap();
    gallery.add(&image(50), scored(meta(Some(5)), None)).unwrap();
    let order = |order| gallery.sorted(order).iter().map(|entry| entry.id).collect::<Vec<_>>();
    // Images added within the same millisecond are ordered by id.
    assert_eq!(order(SortOrder::Newest), [5, 4, 3, 2, 1]);
    assert_eq!(order(SortOrder::Oldest), [1, 2, 3, 4, 5]);
    // 0.8, then the two 0.5 newest first, then the unmeasured newest first.
    assert_eq!(order(SortOrder::BestMatch), [3, 4, 1, 5, 2]);
}

#[test]
fn unknown_ids_are_errors() {
    let root = tempfile::tempdir().unwrap();
    let mut gallery = three(root.path());
    for error in
        [gallery.set_favourite(9, true).unwrap_err(), gallery.remove(&[1, 9]).unwrap_err(), gallery.export(&[9], root.path()).unwrap_err()]
    {
        assert!(matches!(error, GalleryError::UnknownId { id: 9, .. }), "{error}");
        assert!(error.to_string().contains(&root.path().display().to_string()), "{error}");
    }
    assert_eq!(ids(&gallery), [1, 2, 3], "a failed remove removes nothing");
    assert!(root.path().join("arc2face-seed1.png").is_file());
}

#[test]
fn remove_then_undo_restores_files_and_entries() {
    let root = tempfile::tempdir().unwrap();
    let mut gallery = three(root.path());
    gallery.set_favourite(1, true).unwrap();
    let before = gallery.entries().to_vec();

    let removed = gallery.remove(&[3, 1]).unwrap();
    assert_eq!(removed.entries().iter().map(|e| e.id).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(ids(&gallery), [2]);
    assert!(!root.path().join("arc2face-seed1.png").exists());
    assert!(!root.path().join("image.png").exists());
    assert_eq!(std::fs::read_dir(root.path().join("trash")).unwrap().count(), 2);
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(index_path(root.path())).unwrap()).unwrap();
    assert_eq!(index["entries"].as_array().unwrap().len(), 1, "the removal is on disk");

    gallery.undo_remove(removed).unwrap();
    assert_eq!(gallery.entries(), &before[..]);
    for entry in gallery.entries() {
        assert!(gallery.path(entry).is_file());
    }
    assert_eq!(Gallery::open(root.path()).unwrap().entries(), &before[..]);
}

#[test]
fn undo_does_not_overwrite_a_file_that_took_the_name() {
    let root = tempfile::tempdir().unwrap();
    let mut gallery = three(root.path());
    let removed = gallery.remove(&[1]).unwrap();
    let newcomer = gallery.add(&image(99), scored(meta(Some(1)), None)).unwrap();
    assert_eq!((newcomer.id, newcomer.file_name.as_str()), (4, "arc2face-seed1.png"));
    let newcomer_bytes = std::fs::read(root.path().join("arc2face-seed1.png")).unwrap();

    gallery.undo_remove(removed).unwrap();
    assert_eq!(ids(&gallery), [1, 2, 3, 4]);
    assert_eq!(gallery.get(1).unwrap().file_name, "arc2face-seed1-2.png");
    assert_eq!(std::fs::read(root.path().join("arc2face-seed1.png")).unwrap(), newcomer_bytes);
    let restored = image::open(root.path().join("arc2face-seed1-2.png")).unwrap().to_rgb8();
    assert_eq!(restored, image(10));
}

#[test]
fn remove_then_reopen_empties_the_trash_and_forgets_the_entries() {
    let root = tempfile::tempdir().unwrap();
    let mut gallery = three(root.path());
    gallery.remove(&[2]).unwrap();
    drop(gallery);
    let gallery = Gallery::open(root.path()).unwrap();
    assert_eq!(ids(&gallery), [1, 3]);
    assert!(!root.path().join("trash").exists());
    assert!(!root.path().join("arc2face-seed2.png").exists());
}

#[test]
fn export_never_overwrites_and_keeps_the_metadata() {
    let root = tempfile::tempdir().unwrap();
    let gallery = three(root.path());
    let dest = root.path().join("export");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("arc2face-seed1.png"), b"someone else's file").unwrap();

    let exported = gallery.export(&[1, 2], &dest).unwrap();
    assert_eq!(exported, [dest.join("arc2face-seed1-2.png"), dest.join("arc2face-seed2.png")]);
    assert_eq!(std::fs::read(dest.join("arc2face-seed1.png")).unwrap(), b"someone else's file");
    assert_eq!(metadata::read_metadata(&exported[0]).unwrap(), Some(scored(meta(Some(1)), Some(0.5))));
    assert_eq!(std::fs::read(&exported[1]).unwrap(), std::fs::read(root.path().join("arc2face-seed2.png")).unwrap());

    // Again into the same folder: new names again, and no leftovers from the copying.
    let again = gallery.export(&[1], &dest).unwrap();
    assert_eq!(again, [dest.join("arc2face-seed1-3.png")]);
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 4);
}

#[test]
fn a_contact_sheet_has_the_images_in_the_order_asked_and_never_overwrites() {
    let root = tempfile::tempdir().unwrap();
    let gallery = three(root.path());
    let dest = root.path().join("sheet.png");
    std::fs::write(&dest, b"someone else's file").unwrap();

    let written = gallery.contact_sheet(&[3, 1], &dest).unwrap();
    assert_eq!(written, root.path().join("sheet-2.png"));
    assert_eq!(std::fs::read(&dest).unwrap(), b"someone else's file");
    let sheet = image::open(&written).unwrap().to_rgb8();
    let side = image(0).width();
    assert_eq!((sheet.width(), sheet.height()), (2 * side + 3 * 8, side + 2 * 8));
    let first = gallery.entries().iter().find(|e| e.id == 3).unwrap();
    let first = image::open(root.path().join(&first.file_name)).unwrap().to_rgb8();
    assert_eq!(sheet.get_pixel(8, 8), first.get_pixel(0, 0), "image 3 comes first");
    assert!(gallery.contact_sheet(&[1, 99], &dest).is_err(), "an unknown id fails the sheet");
    assert!(!root.path().join("sheet-3.png").exists());
}

#[test]
fn a_deleted_index_is_rebuilt_from_the_pngs() {
    let root = tempfile::tempdir().unwrap();
    let gallery = three(root.path());
    let files: Vec<String> = gallery.entries().iter().map(|e| e.file_name.clone()).collect();
    std::fs::remove_file(index_path(root.path())).unwrap();
    // A PNG that is not ours is left alone.
    image(5).save(root.path().join("holiday.png")).unwrap();

    let rebuilt = Gallery::open(root.path()).unwrap();
    let mut names: Vec<String> = rebuilt.entries().iter().map(|e| e.file_name.clone()).collect();
    names.sort();
    let mut expected = files.clone();
    expected.sort();
    assert_eq!(names, expected);
    assert!(rebuilt.entries().iter().all(|e| e.metadata == metadata::read_metadata(&rebuilt.path(e)).unwrap().unwrap()));
    assert!(index_path(root.path()).is_file(), "the rebuilt index is saved");
    assert!(root.path().join("holiday.png").is_file());
}

#[test]
fn a_corrupt_index_is_kept_aside_and_rebuilt() {
    for garbage in [&b"{\"version\":1,\"next_id\":4,\"entr"[..], b"\x00\xffnot json", b"{\"version\":99,\"next_id\":4,\"entries\":[]}"] {
        let root = tempfile::tempdir().unwrap();
        three(root.path());
        std::fs::write(index_path(root.path()), garbage).unwrap();

        let rebuilt = Gallery::open(root.path()).unwrap();
        assert_eq!(rebuilt.entries().len(), 3);
        let backups: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|item| item.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with("gallery.json.corrupt-"))
            .collect();
        assert_eq!(backups.len(), 1, "{backups:?}");
        assert_eq!(std::fs::read(root.path().join(&backups[0])).unwrap(), garbage);
        assert!(serde_json::from_slice::<serde_json::Value>(&std::fs::read(index_path(root.path())).unwrap()).is_ok());
    }
}

#[test]
fn an_entry_whose_png_disappeared_is_dropped() {
    let root = tempfile::tempdir().unwrap();
    three(root.path());
    std::fs::remove_file(root.path().join("arc2face-seed2.png")).unwrap();
    let gallery = Gallery::open(root.path()).unwrap();
    assert_eq!(ids(&gallery), [1, 3]);
    assert_eq!(ids(&Gallery::open(root.path()).unwrap()), [1, 3]);
}

#[test]
fn a_png_missing_from_the_index_is_picked_up() {
    let root = tempfile::tempdir().unwrap();
    three(root.path());
    // As if the app had been killed between writing the PNG and writing the index.
    metadata::write_png(root.path(), "seed42", &image(42), &meta(Some(42))).unwrap();
    image(5).save(root.path().join("not-ours.png")).unwrap();
    std::fs::write(root.path().join("seed43.png"), b"").unwrap(); // a write cut short

    let gallery = Gallery::open(root.path()).unwrap();
    assert_eq!(ids(&gallery), [1, 2, 3, 4]);
    let found = gallery.get(4).unwrap();
    assert_eq!(found.file_name, "seed42.png");
    assert_eq!(found.metadata, meta(Some(42)));
    assert!(!found.favourite && found.metadata.identity_match.is_none());
}

#[test]
fn index_entries_outside_the_folder_are_dropped() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("gallery");
    three(&dir);
    let outside = root.path().join("outside.png");
    metadata::write_png(root.path(), "outside", &image(1), &meta(Some(9))).unwrap();
    let text = std::fs::read_to_string(index_path(&dir)).unwrap();
    std::fs::write(
        index_path(&dir),
        text.replace("\"arc2face-seed2.png\"", "\"../outside.png\"").replace("\"arc2face-noise0.png\"", "\"gallery.json\""),
    )
    .unwrap();

    let gallery = Gallery::open(&dir).unwrap();
    // arc2face-seed2.png and arc2face-noise0.png are still in the folder, so they come back, with
    // the ids their PNGs record.
    assert_eq!(gallery.get(1).unwrap().file_name, "arc2face-seed1.png");
    let mut names: Vec<&str> = gallery.entries().iter().map(|e| e.file_name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["arc2face-noise0.png", "arc2face-seed1.png", "arc2face-seed2.png"]);
    assert_eq!(ids(&gallery), [1, 2, 3]);
    assert!(outside.is_file());
}

#[cfg(unix)]
#[test]
fn a_read_only_folder_fails_the_add_and_keeps_the_index() {
    use std::os::unix::fs::PermissionsExt;

    let root = tempfile::tempdir().unwrap();
    let mut gallery = three(root.path());
    let index_before = std::fs::read(index_path(root.path())).unwrap();
    let set_mode = |mode| std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    set_mode(0o555);
    // Root ignores permissions: then there is nothing to test.
    let probe = root.path().join("probe");
    if std::fs::write(&probe, b"").is_ok() {
        let _ = std::fs::remove_file(&probe);
        set_mode(0o755);
        eprintln!("skipped: the folder stays writable (running as root)");
        return;
    }

    let added = gallery.add(&image(40), scored(meta(Some(4)), None)).map(|entry| entry.id);
    let favourite = gallery.set_favourite(1, true);
    let removed = gallery.remove(&[2]);
    set_mode(0o755);

    let error = added.unwrap_err();
    assert!(error.to_string().contains(&root.path().display().to_string()), "{error}");
    assert!(favourite.is_err() && removed.is_err());
    assert_eq!(std::fs::read(index_path(root.path())).unwrap(), index_before);
    assert_eq!(ids(&gallery), [1, 2, 3]);
    assert!(!gallery.get(1).unwrap().favourite);
    assert!(root.path().join("arc2face-seed2.png").is_file());
    assert_eq!(ids(&Gallery::open(root.path()).unwrap()), [1, 2, 3]);
}

/// A gallery folder and a PNG as version 0.1.0 wrote them (tests/fixtures/legacy) still load: the
/// flat metadata becomes a spec, ids, favourites and match scores stay, and the index is
/// rewritten in the current layout.
#[test]
fn galleries_and_pngs_of_version_0_1_keep_loading() {
    let legacy = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy");
    let root = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(legacy.join("gallery")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), root.path().join(entry.file_name())).unwrap();
    }
    let gallery = Gallery::open(root.path()).unwrap();
    assert_eq!(ids(&gallery), [1, 2]);
    let second = gallery.get(2).unwrap();
    assert!(second.favourite);
    assert_eq!(second.metadata.identity_match, Some(0.75));
    let spec = &second.metadata.spec;
    assert_eq!((spec.seed, spec.steps, spec.guidance, spec.size), (Some(12), 3, 3.0, Some(16)));
    let IdentitySource::Faces { faces } = &spec.identity else { panic!("a photo identity: {:?}", spec.identity) };
    let faces: Vec<(&str, usize)> = faces.iter().map(|f| (f.photo.as_str(), f.face)).collect();
    assert_eq!(faces, [("astronaut.jpg", 1), ("two_faces.jpg", 0)]);
    let index = std::fs::read_to_string(index_path(root.path())).unwrap();
    assert!(index.contains("\"version\": 2") && index.contains("\"spec\""), "rewritten in the current layout");
    drop(gallery);
    assert_eq!(Gallery::open(root.path()).unwrap().entries(), Gallery::open(root.path()).unwrap().entries());

    let png = metadata::read_metadata(&legacy.join("cli-seed7.png")).unwrap().expect("metadata");
    assert_eq!((png.spec.seed, png.spec.steps, png.spec.guidance, png.width), (Some(7), 3, 2.5, 32));
    assert_eq!(png.spec.identity, IdentitySource::Embedding { file: "id_embedding.npy".into() });
    assert_eq!(png.model_files.len(), 7);
}

/// The PNGs themselves hold each image's id and favourite, and its identity match, so an index
/// rebuilt from them (lost, or damaged) is the index that was lost.
#[test]
fn a_rebuilt_index_keeps_ids_favourites_and_matches() {
    let root = tempfile::tempdir().unwrap();
    let mut gallery = three(root.path());
    gallery.remove(&[1]).unwrap();
    gallery.set_favourite(3, true).unwrap();
    gallery.add(&image(40), scored(meta(Some(4)), Some(0.3))).unwrap();
    let before = gallery.entries().to_vec();
    drop(gallery);
    std::fs::remove_file(index_path(root.path())).unwrap();
    let rebuilt = Gallery::open(root.path()).unwrap();
    assert_eq!(rebuilt.entries(), &before[..]);
    assert_eq!(ids(&rebuilt), [2, 3, 4]);
    assert!(rebuilt.get(3).unwrap().favourite);
    // The pixels are untouched by the records written into the file.
    assert_eq!(image::open(rebuilt.path(rebuilt.get(3).unwrap())).unwrap().to_rgb8(), image(30));
}
