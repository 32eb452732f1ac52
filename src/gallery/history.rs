//! The persistent gallery: every generated image kept across runs in one folder.
//!
//! The folder holds the PNGs (written by [`metadata::write_png`], so each one carries its own
//! generation metadata) and `gallery.json`, an index that adds what a PNG cannot say about
//! itself: its id, when it was made, whether it is a favourite and how well it matches the chosen
//! face. The PNGs are the ground truth; the index is rebuilt or repaired from them on [`Gallery::open`]
//! whenever it is missing, damaged or out of step, so a crash or kill at any point loses no image
//! that was already written.
//!
//! Every change writes the whole index to `gallery.json.tmp`, syncs it and renames it over
//! `gallery.json`, and only then updates the in-memory state: a failed write (full disk, read-only
//! folder) leaves both the previous index and the `Gallery` as they were.

use std::collections::HashSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::engine::ImageMetadata;
use crate::gallery::metadata::{self, GalleryRecord, StoredMetadata};

const INDEX_FILE: &str = "gallery.json";
/// Version 2 holds [`ImageMetadata`]; version 1 (app 0.1.0) held its flat predecessor, and is
/// read and converted.
const INDEX_VERSION: u32 = 2;
const OLDEST_INDEX_VERSION: u32 = 1;
const TRASH_DIR: &str = "trash";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredEntry")]
pub struct GalleryEntry {
    /// Unique and increasing in insertion order; never reused, even after deletes. Also kept in
    /// the PNG ([`metadata::GalleryRecord`]), so a rebuilt index keeps it.
    pub id: u64,
    /// The PNG, directly inside the gallery folder.
    pub file_name: String,
    pub metadata: ImageMetadata,
    /// Also kept in the PNG.
    pub favourite: bool,
}

/// An index entry as any version wrote it: version 1 kept the creation time and the identity
/// match beside the metadata; now the metadata holds them.
#[derive(Deserialize)]
struct StoredEntry {
    id: u64,
    file_name: String,
    metadata: StoredMetadata,
    #[serde(default)]
    favourite: bool,
    #[serde(default)]
    created_unix_ms: Option<u64>,
    #[serde(default)]
    identity_match: Option<f32>,
}

impl From<StoredEntry> for GalleryEntry {
    fn from(stored: StoredEntry) -> Self {
        let mut metadata: ImageMetadata = stored.metadata.into();
        if let Some(created) = stored.created_unix_ms {
            metadata.created_unix_ms = created;
        }
        metadata.identity_match = metadata.identity_match.or(stored.identity_match);
        GalleryEntry { id: stored.id, file_name: stored.file_name, metadata, favourite: stored.favourite }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    #[default]
    Newest,
    Oldest,
    /// Highest identity match first; unmeasured entries last; ties newest first.
    BestMatch,
}

/// The on-disk index.
#[derive(Serialize, Deserialize)]
struct Index {
    version: u32,
    next_id: u64,
    entries: Vec<GalleryEntry>,
}

/// What [`Gallery::remove`] took away, for [`Gallery::undo_remove`]. The PNGs wait in `trash/`
/// until the gallery is next opened.
#[derive(Debug)]
pub struct Removed {
    entries: Vec<GalleryEntry>,
}

impl Removed {
    /// The removed entries, in gallery order.
    pub fn entries(&self) -> &[GalleryEntry] {
        &self.entries
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GalleryError {
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing a new PNG failed; the error names the file.
    #[error(transparent)]
    WritePng(#[from] metadata::WriteError),
    #[error("no image with id {id} in the gallery {}", dir.display())]
    UnknownId { id: u64, dir: PathBuf },
}

/// Builds the `map_err` closure for an I/O step on `path`.
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> GalleryError {
    let path = path.to_path_buf();
    move |source| GalleryError::Io { action, path, source }
}

pub struct Gallery {
    dir: PathBuf,
    /// Sorted by id, which is insertion order (ids only grow).
    entries: Vec<GalleryEntry>,
    next_id: u64,
}

impl Gallery {
    /// Opens the gallery in `dir`, creating the folder if needed, and brings the index in step
    /// with the PNGs that are actually there (see the module docs). Empties the trash: undo only
    /// lasts for a session.
    pub fn open(dir: &Path) -> Result<Self, GalleryError> {
        std::fs::create_dir_all(dir).map_err(io_error("create the gallery folder", dir))?;
        // Failing to empty the trash must not keep the gallery from opening: what is left there
        // is never read back, and the next open tries again.
        let _ = std::fs::remove_dir_all(dir.join(TRASH_DIR));

        let (loaded, mut dirty) = match read_index(dir)? {
            // An older layout is rewritten in the current one.
            Some(index) => {
                let older = index.version != INDEX_VERSION;
                (index, older)
            }
            None => (Index { version: INDEX_VERSION, next_id: 1, entries: Vec::new() }, true),
        };

        // Keep the entries whose PNG is still there; drop duplicates and names that point
        // anywhere but a PNG directly in this folder (a damaged or hand-edited index must not
        // make remove or export reach outside it).
        let mut seen_ids = HashSet::new();
        let mut seen_names = HashSet::new();
        let mut entries = Vec::with_capacity(loaded.entries.len());
        for entry in loaded.entries {
            let keep = is_gallery_png(&entry.file_name)
                && dir.join(&entry.file_name).is_file()
                && seen_ids.insert(entry.id)
                && seen_names.insert(entry.file_name.clone());
            if keep {
                entries.push(entry);
            } else {
                dirty = true;
            }
        }
        entries.sort_by_key(|entry| entry.id);

        // Ids are never reused, even if the stored next_id was wrong.
        let mut next_id = loaded.next_id.max(entries.last().map_or(1, |entry| entry.id + 1));
        dirty |= next_id != loaded.next_id;

        // PNGs of ours that the index does not know: a crash between writing a PNG and writing
        // the index, or an index that was lost. They keep the id and favourite their PNG
        // records when that id is free, and join oldest first.
        for (file_name, metadata, record) in unindexed_pngs(dir, &seen_names)? {
            let id = match record {
                Some(record) if seen_ids.insert(record.id) => record.id,
                _ => {
                    while !seen_ids.insert(next_id) {
                        next_id += 1;
                    }
                    next_id
                }
            };
            next_id = next_id.max(id + 1);
            entries.push(GalleryEntry { id, file_name, metadata, favourite: record.is_some_and(|r| r.favourite) });
            dirty = true;
        }
        entries.sort_by_key(|entry| entry.id);

        let index = Index { version: INDEX_VERSION, next_id, entries };
        if dirty {
            write_index(dir, &index)?;
        }
        Ok(Self { dir: dir.to_path_buf(), entries: index.entries, next_id: index.next_id })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// All entries in insertion order.
    pub fn entries(&self) -> &[GalleryEntry] {
        &self.entries
    }

    pub fn sorted(&self, order: SortOrder) -> Vec<&GalleryEntry> {
        sorted(&self.entries, order)
    }

    pub fn get(&self, id: u64) -> Option<&GalleryEntry> {
        self.position(id).ok().map(|i| &self.entries[i])
    }

    pub fn path(&self, entry: &GalleryEntry) -> PathBuf {
        self.dir.join(&entry.file_name)
    }

    /// Writes `image` with its metadata as a new PNG and records it. On error nothing changes:
    /// a PNG written before the index failed is deleted again.
    pub fn add(&mut self, image: &RgbImage, metadata: ImageMetadata) -> Result<&GalleryEntry, GalleryError> {
        let path = write_image(&self.dir, image, &metadata)?;
        self.adopt(&path, metadata).inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
        })
    }

    /// Records a PNG that [`write_image`] put into this gallery's folder, giving it the next id
    /// (written into the PNG too).
    pub fn adopt(&mut self, path: &Path, metadata: ImageMetadata) -> Result<&GalleryEntry, GalleryError> {
        let id = self.next_id;
        metadata::write_gallery_record(path, &GalleryRecord { id, favourite: false }).map_err(io_error("record the image in", path))?;
        let entry = GalleryEntry { id, file_name: crate::file_name(path), metadata, favourite: false };
        let mut entries = self.entries.clone();
        entries.push(entry);
        self.commit(entries, id + 1)?;
        Ok(&self.entries[self.entries.len() - 1])
    }

    /// Marks an image as a favourite or not, in its PNG and in the index.
    pub fn set_favourite(&mut self, id: u64, favourite: bool) -> Result<(), GalleryError> {
        let at = self.position(id).map_err(|_| self.unknown(id))?;
        let path = self.path(&self.entries[at]);
        metadata::write_gallery_record(&path, &GalleryRecord { id, favourite }).map_err(io_error("record the favourite in", &path))?;
        let mut entries = self.entries.clone();
        entries[at].favourite = favourite;
        self.commit(entries, self.next_id).inspect_err(|_| {
            let _ = metadata::write_gallery_record(&path, &GalleryRecord { id, favourite: !favourite });
        })
    }

    /// Removes the entries and moves their PNGs to `trash/`, where [`Gallery::undo_remove`] finds
    /// them until the gallery is next opened. All or nothing: on error every PNG is back in place.
    pub fn remove(&mut self, ids: &[u64]) -> Result<Removed, GalleryError> {
        let wanted: HashSet<u64> = ids.iter().copied().collect();
        for &id in &wanted {
            self.position(id).map_err(|_| self.unknown(id))?;
        }
        let (removed, kept): (Vec<GalleryEntry>, Vec<GalleryEntry>) =
            self.entries.iter().cloned().partition(|entry| wanted.contains(&entry.id));

        let trash = self.dir.join(TRASH_DIR);
        std::fs::create_dir_all(&trash).map_err(io_error("create the trash folder", &trash))?;
        // The files move first: a crash before the index is written then looks, on the next
        // open, like PNGs that disappeared, and the removal completes. The other way round the
        // images would come back without their ids and favourites.
        let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
        for entry in &removed {
            let (from, to) = (self.path(entry), self.trash_path(entry));
            match std::fs::rename(&from, &to) {
                Ok(()) => moved.push((to, from)),
                // Already gone: there is nothing to move, and the entry goes all the same.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    move_back(&moved);
                    return Err(io_error("move to the trash", &from)(error));
                }
            }
        }
        if let Err(error) = self.commit(kept, self.next_id) {
            move_back(&moved);
            return Err(error);
        }
        Ok(Removed { entries: removed })
    }

    /// Puts removed entries back with their ids, in their place in insertion order. A PNG whose
    /// name was taken meanwhile (a new image with the same seed) comes back as `name-2.png`…;
    /// an entry whose PNG is no longer in the trash cannot come back and is left out.
    pub fn undo_remove(&mut self, removed: Removed) -> Result<(), GalleryError> {
        let mut entries = self.entries.clone();
        let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
        for mut entry in removed.entries {
            let from = self.trash_path(&entry);
            if self.position(entry.id).is_ok() || !from.is_file() {
                continue;
            }
            let to = match put_back(&from, &self.dir, &entry.file_name) {
                Ok(to) => to,
                Err(error) => {
                    move_back(&moved);
                    return Err(error);
                }
            };
            entry.file_name = crate::file_name(&to);
            moved.push((to, from));
            let at = entries.partition_point(|other| other.id < entry.id);
            entries.insert(at, entry);
        }
        if let Err(error) = self.commit(entries, self.next_id) {
            move_back(&moved);
            return Err(error);
        }
        Ok(())
    }

    /// Copies the PNGs (with their metadata chunks) into `dest`, creating it if needed, under
    /// their gallery names or, when taken, `name-2.png`, `name-3.png`…; never overwrites. Each copy
    /// appears whole or not at all; copies made before an error stay.
    pub fn export(&self, ids: &[u64], dest: &Path) -> Result<Vec<PathBuf>, GalleryError> {
        let entries = ids
            .iter()
            .map(|&id| self.position(id).map(|i| &self.entries[i]).map_err(|_| self.unknown(id)))
            .collect::<Result<Vec<_>, _>>()?;
        std::fs::create_dir_all(dest).map_err(io_error("create the export folder", dest))?;
        let mut exported = Vec::with_capacity(entries.len());
        for entry in entries {
            let temporary = dest.join(format!(".{}.part", entry.file_name));
            let source = self.path(entry);
            let copied = std::fs::copy(&source, &temporary)
                .and_then(|_| std::fs::File::open(&temporary)?.sync_all())
                .and_then(|()| metadata::link_under_free_name(&temporary, dest, &entry.file_name));
            let _ = std::fs::remove_file(&temporary);
            exported.push(copied.map_err(io_error("export", &source))?);
        }
        Ok(exported)
    }

    /// Writes the images `ids` (in that order) side by side as one PNG at `dest`, never
    /// replacing a file: the next free name is taken.
    pub fn contact_sheet(&self, ids: &[u64], dest: &Path) -> Result<PathBuf, GalleryError> {
        let images = ids
            .iter()
            .map(|&id| {
                let entry = self.position(id).map(|i| &self.entries[i]).map_err(|_| self.unknown(id))?;
                let path = self.path(entry);
                image::open(&path).map(|image| image.to_rgb8()).map_err(|e| io_error("read", &path)(io::Error::other(e)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sheet = super::sheet::contact_sheet(&images, 8);
        let dir = dest.parent().unwrap_or(Path::new("."));
        let temporary = dir.join(format!(".contact-sheet-{}.png.part", std::process::id()));
        let written = sheet
            .save_with_format(&temporary, image::ImageFormat::Png)
            .map_err(io::Error::other)
            .and_then(|()| metadata::link_under_free_name(&temporary, dir, &crate::file_name(dest)));
        let _ = std::fs::remove_file(&temporary);
        written.map_err(io_error("write the contact sheet", dest))
    }

    /// Writes the new state as the index, atomically, and adopts it only once it is on disk.
    fn commit(&mut self, entries: Vec<GalleryEntry>, next_id: u64) -> Result<(), GalleryError> {
        let index = Index { version: INDEX_VERSION, next_id, entries };
        write_index(&self.dir, &index)?;
        self.entries = index.entries;
        self.next_id = index.next_id;
        Ok(())
    }

    fn position(&self, id: u64) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&id, |entry| entry.id)
    }

    fn unknown(&self, id: u64) -> GalleryError {
        GalleryError::UnknownId { id, dir: self.dir.clone() }
    }

    /// Trashed files carry their id, so that a later image under the same name can be removed
    /// too without replacing the first one in the trash.
    fn trash_path(&self, entry: &GalleryEntry) -> PathBuf {
        self.dir.join(TRASH_DIR).join(format!("{}-{}", entry.id, entry.file_name))
    }
}

/// `entries` in the given order.
pub fn sorted(entries: &[GalleryEntry], order: SortOrder) -> Vec<&GalleryEntry> {
    let newest_first = |a: &&GalleryEntry, b: &&GalleryEntry| (b.metadata.created_unix_ms, b.id).cmp(&(a.metadata.created_unix_ms, a.id));
    let mut sorted: Vec<&GalleryEntry> = entries.iter().collect();
    match order {
        SortOrder::Newest => sorted.sort_by(newest_first),
        SortOrder::Oldest => sorted.sort_by(|a, b| newest_first(b, a)),
        SortOrder::BestMatch => sorted.sort_by(|a, b| match (a.metadata.identity_match, b.metadata.identity_match) {
            (Some(x), Some(y)) => y.total_cmp(&x).then_with(|| newest_first(a, b)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => newest_first(a, b),
        }),
    }
    sorted
}

/// Writes a result into the gallery folder `dir` under [`metadata::file_stem`], never replacing
/// a file, without recording it: the worker thread does this so that encoding and syncing never
/// hold up a frame, then the UI records it with [`Gallery::adopt`].
pub fn write_image(dir: &Path, image: &RgbImage, metadata: &ImageMetadata) -> Result<PathBuf, metadata::WriteError> {
    metadata::write_png(dir, &metadata::file_stem(metadata), image, metadata)
}

/// Reads `gallery.json`: `None` when it is missing, or when it is damaged (not our JSON, or
/// another version), in which case it is first kept aside as `gallery.json.corrupt-<unix ms>`
/// so nothing is lost, and the caller rebuilds the index from the PNGs.
fn read_index(dir: &Path) -> Result<Option<Index>, GalleryError> {
    let path = dir.join(INDEX_FILE);
    let text = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("read the gallery index", &path)(error)),
    };
    match serde_json::from_slice::<Index>(&text) {
        Ok(index) if (OLDEST_INDEX_VERSION..=INDEX_VERSION).contains(&index.version) => Ok(Some(index)),
        _ => {
            let backup = dir.join(format!("{INDEX_FILE}.corrupt-{}", now_unix_ms()));
            std::fs::rename(&path, &backup).map_err(io_error("set aside the damaged gallery index", &path))?;
            Ok(None)
        }
    }
}

/// Writes `gallery.json.tmp`, syncs it and renames it over `gallery.json`, so the index on disk
/// is always either the previous one or the new one, whole.
fn write_index(dir: &Path, index: &Index) -> Result<(), GalleryError> {
    let path = dir.join(INDEX_FILE);
    let temporary = dir.join(format!("{INDEX_FILE}.tmp"));
    let written = serde_json::to_vec_pretty(index)
        .map_err(io::Error::other)
        .and_then(|json| {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&json)?;
            file.sync_all()
        })
        .map_err(io_error("write", &temporary))
        .and_then(|()| std::fs::rename(&temporary, &path).map_err(io_error("replace", &path)));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    sync_dir(dir);
    Ok(())
}

/// Makes the rename itself durable. Best effort: the new index is already in place, and not
/// every platform can open a folder to sync it.
fn sync_dir(dir: &Path) {
    if let Ok(folder) = std::fs::File::open(dir) {
        let _ = folder.sync_all();
    }
}

/// The PNGs in `dir` that are not in `known` and carry our metadata, with the gallery's record
/// of each when it has one, oldest first (by the time the metadata records, else the file's
/// modification time). Files that cannot be read as such (other people's PNGs, the empty
/// placeholder of a PNG write cut short) are not ours and are left alone.
fn unindexed_pngs(dir: &Path, known: &HashSet<String>) -> Result<Vec<(String, ImageMetadata, Option<GalleryRecord>)>, GalleryError> {
    let listing = std::fs::read_dir(dir).map_err(io_error("list the gallery folder", dir))?;
    let mut found = Vec::new();
    for item in listing {
        let item = item.map_err(io_error("list the gallery folder", dir))?;
        let Ok(file_name) = item.file_name().into_string() else { continue };
        if !is_gallery_png(&file_name) || known.contains(&file_name) {
            continue;
        }
        let Ok((Some(mut metadata), record)) = metadata::read_records(&item.path()) else { continue };
        if metadata.created_unix_ms == 0 {
            metadata.created_unix_ms = item.metadata().and_then(|m| m.modified()).map_or_else(|_| now_unix_ms(), crate::unix_ms);
        }
        found.push((file_name, metadata, record));
    }
    found.sort_by(|a, b| (a.1.created_unix_ms, &a.0).cmp(&(b.1.created_unix_ms, &b.0)));
    Ok(found)
}

/// A name the gallery may hold: a `.png` directly inside the folder, nothing with a path in it.
fn is_gallery_png(name: &str) -> bool {
    let path = Path::new(name);
    let mut components = path.components();
    let plain = matches!((components.next(), components.next()), (Some(std::path::Component::Normal(_)), None));
    plain && path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("png"))
}

/// Moves a trashed PNG back into `dir` under `file_name`, or the next free name.
fn put_back(from: &Path, dir: &Path, file_name: &str) -> Result<PathBuf, GalleryError> {
    let to = metadata::link_under_free_name(from, dir, file_name).map_err(io_error("restore", from))?;
    let _ = std::fs::remove_file(from);
    Ok(to)
}

/// Undoes renames done so far after a later step failed. Best effort: the error being
/// returned is the one the caller needs to see.
fn move_back(moved: &[(PathBuf, PathBuf)]) {
    for (now, before) in moved.iter().rev() {
        let _ = std::fs::rename(now, before);
    }
}

fn now_unix_ms() -> u64 {
    crate::unix_ms(std::time::SystemTime::now())
}
