//! The download manager against a local stand-in for the Hugging Face Hub (tests/common/mock_hub.rs):
//! resume after a cut, checksum mismatches, the Python cache online and offline, 404 and 401.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use common::mock_hub::{Fault, MockHub, git_sha1, sha256};

use arc2face_studio::models::check::{self, FileState, partial_path};
use arc2face_studio::models::download::{DownloadEvent, DownloadOptions, download_all};
use arc2face_studio::models::hub::{Hub, HubConfig};
use arc2face_studio::models::{self, ModelFile, ModelsDir};

fn lock_path(models: &ModelsDir, file: ModelFile) -> PathBuf {
    let dest = models.path(file);
    dest.with_file_name(format!("{}.lock", dest.file_name().unwrap().to_string_lossy()))
}

/// Runs the download manager, collecting every event per file.
fn download(models: &ModelsDir, files: &[ModelFile], hub: &Hub) -> (usize, Vec<Vec<DownloadEvent>>) {
    let events = Mutex::new(vec![Vec::new(); files.len()]);
    let options = DownloadOptions { parallel: 2, replace: false };
    let summary = download_all(models, files, hub, options, &AtomicBool::new(false), &|i, event| events.lock().unwrap()[i].push(event));
    (summary.failed, events.into_inner().unwrap())
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(u32::from(seed % 31)) as u8).collect()
}

/// Files in the models folder, relative, sorted (to see that nothing stray is left).
fn listing(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

const BIG: ModelFile = models::UNET_WEIGHTS;
const SMALL: ModelFile = models::VAE_CONFIG;

#[test]
fn downloads_lfs_and_plain_files_verified_with_their_checksums_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let hub = MockHub::start();
    let (big, small, space) = (payload(3_000_000, 1), br#"{"a": 1}"#.to_vec(), payload(50_000, 2));
    hub.host(BIG, big.clone(), true);
    hub.host(SMALL, small.clone(), false);
    hub.host(models::DETECTOR, space.clone(), true);
    let models = ModelsDir::new(dir.path().join("models"));
    let (failed, events) = download(&models, &[BIG, SMALL, models::DETECTOR], &hub.hub(&dir.path().join("cache")));
    assert_eq!(failed, 0, "{events:?}");
    assert_eq!(std::fs::read(models.path(BIG)).unwrap(), big);
    assert_eq!(std::fs::read(models.path(SMALL)).unwrap(), small);
    assert_eq!(std::fs::read(models.path(models::DETECTOR)).unwrap(), space);
    assert!(events.iter().all(|e| e.last() == Some(&DownloadEvent::Finished)), "{events:?}");
    assert!(hub.log().iter().any(|l| l.starts_with("HEAD /spaces/FoivosPar/Arc2Face/resolve/main/models/antelopev2/")), "{:?}", hub.log());
    let recorded = check::Checksums::read(&models);
    assert_eq!(recorded.get(BIG).unwrap().checksum.hex(), sha256(&big));
    assert_eq!(recorded.get(SMALL).unwrap().checksum.hex(), git_sha1(&small));
    assert_eq!(
        listing(models.root()),
        ["antelopev2/scrfd_10g_bnkps.onnx", "arc2face/diffusion_pytorch_model.safetensors", "checksums.json", "vae/config.json"]
    );

    // Present files are not fetched again.
    let before = hub.log().len();
    let (failed, events) = download(&models, &[BIG, SMALL], &hub.hub(&dir.path().join("cache")));
    assert_eq!((failed, hub.log().len()), (0, before));
    assert!(events.iter().all(|e| e == &[DownloadEvent::AlreadyPresent]));
}

#[test]
fn a_download_cut_halfway_resumes_with_a_range_request_and_ends_verified() {
    let dir = tempfile::tempdir().unwrap();
    let hub = MockHub::start();
    let big = payload(4_000_000, 3);
    hub.host(BIG, big.clone(), true);
    hub.fault(BIG, Fault::CutAfter(2_000_000));
    let models = ModelsDir::new(dir.path().join("models"));
    let (failed, events) = download(&models, &[BIG], &hub.hub(&dir.path().join("cache")));
    assert_eq!(failed, 0, "{events:?}");
    assert!(
        events[0].iter().any(|e| matches!(e, DownloadEvent::Retrying { message } if message.contains("2000000 of 4000000"))),
        "{events:?}"
    );
    let gets: Vec<String> = hub.log().into_iter().filter(|l| l.starts_with("GET /cdn/")).collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(gets[1].ends_with("range=bytes=2000000-"), "the second request resumes: {gets:?}");
    assert_eq!(std::fs::read(models.path(BIG)).unwrap(), big);
    assert!(!partial_path(&models.path(BIG)).exists());
}

#[test]
fn a_partial_file_left_by_a_killed_process_is_resumed_not_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let hub = MockHub::start();
    let big = payload(3_000_000, 4);
    hub.host(BIG, big.clone(), true);
    let models = ModelsDir::new(dir.path().join("models"));
    let part = partial_path(&models.path(BIG));
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, &big[..1_234_567]).unwrap();
    // Beside it, the lock file a download keeps, naming the version its `.part` is of.
    std::fs::write(lock_path(&models, BIG), sha256(&big)).unwrap();
    assert!(matches!(check::status(&models)[1].state, FileState::Missing { partial: Some(1_234_567), .. }));

    let (failed, events) = download(&models, &[BIG], &hub.hub(&dir.path().join("cache")));
    assert_eq!(failed, 0, "{events:?}");
    assert_eq!(events[0][0], DownloadEvent::Started { total: 3_000_000, done: 1_234_567, from_cache: false });
    assert!(hub.log().iter().any(|l| l.ends_with("range=bytes=1234567-")), "{:?}", hub.log());
    assert_eq!(std::fs::read(models.path(BIG)).unwrap(), big);
}

#[test]
fn corrupt_bytes_are_rejected_and_fetched_again_and_never_left_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let hub = MockHub::start();
    let big = payload(1_000_000, 5);
    hub.host(BIG, big.clone(), true);
    hub.fault(BIG, Fault::CorruptOnce);
    let models = ModelsDir::new(dir.path().join("models"));
    let (failed, events) = download(&models, &[BIG], &hub.hub(&dir.path().join("cache")));
    assert_eq!(failed, 0, "{events:?}");
    assert!(
        events[0].iter().any(|e| matches!(e, DownloadEvent::Retrying { message } if message.contains("checksum mismatch"))),
        "{events:?}"
    );
    assert_eq!(std::fs::read(models.path(BIG)).unwrap(), big);

    // A source that never sends the right bytes: the file fails, and nothing is left behind.
    let other = models::VAE_WEIGHTS;
    hub.host(other, payload(500_000, 6), true);
    hub.fault(other, Fault::CorruptAlways);
    let (failed, events) = download(&models, &[other], &hub.hub(&dir.path().join("cache")));
    assert_eq!(failed, 1);
    let last = events[0].last().unwrap();
    assert!(
        matches!(last, DownloadEvent::Failed { message } if message.contains("gave up after 3 tries") && message.contains("checksum mismatch")),
        "{last:?}"
    );
    assert!(!models.path(other).exists() && !partial_path(&models.path(other)).exists());
}

/// A Python-style hub cache holding `file`: blob named by checksum, snapshot link, refs/main.
fn python_cache_with(cache: &Path, file: ModelFile, bytes: &[u8], checksum: &str) -> PathBuf {
    let repo = cache.join(format!("models--{}", file.source.repo.replace('/', "--")));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let blob = repo.join("blobs").join(checksum);
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    std::fs::write(&blob, bytes).unwrap();
    let snapshot = repo.join("snapshots").join(commit).join(file.source.path);
    std::fs::create_dir_all(snapshot.parent().unwrap()).unwrap();
    let depth = file.source.path.matches('/').count() + 2;
    std::os::unix::fs::symlink(format!("{}blobs/{checksum}", "../".repeat(depth)), &snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    blob
}

#[test]
fn offline_mode_is_served_from_the_python_hub_cache_without_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub-cache");
    let big = payload(200_000, 7);
    python_cache_with(&cache, BIG, &big, &sha256(&big));
    let hub = MockHub::start();
    let offline = Hub::new(HubConfig { endpoint: hub.endpoint.clone(), token: None, cache_dir: Some(cache.clone()), offline: true });
    let models = ModelsDir::new(dir.path().join("models"));
    let (failed, events) = download(&models, &[BIG, SMALL], &offline);
    assert_eq!(failed, 1, "{events:?}");
    assert!(hub.log().is_empty(), "offline mode made requests: {:?}", hub.log());
    assert_eq!(std::fs::read(models.path(BIG)).unwrap(), big);
    assert!(matches!(events[0][0], DownloadEvent::Started { from_cache: true, .. }));
    let last = events[1].last().unwrap();
    assert!(
        matches!(last, DownloadEvent::Failed { message } if message.contains("HF_HUB_OFFLINE") && message.contains("vae/config.json")),
        "{last:?}"
    );
}

#[test]
fn online_a_file_already_in_the_python_cache_is_not_downloaded_again() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub-cache");
    let big = payload(300_000, 8);
    python_cache_with(&cache, BIG, &big, &sha256(&big));
    let hub = MockHub::start();
    hub.host(BIG, big.clone(), true);
    let models = ModelsDir::new(dir.path().join("models"));
    let (failed, events) = download(&models, &[BIG], &hub.hub(&cache));
    assert_eq!(failed, 0, "{events:?}");
    assert!(hub.log().iter().all(|l| l.starts_with("HEAD ")), "only the metadata is asked for: {:?}", hub.log());
    assert_eq!(std::fs::read(models.path(BIG)).unwrap(), big);

    // A damaged cache entry is caught, named, and not copied into the models folder.
    let other = models::VAE_WEIGHTS;
    let good = payload(1000, 9);
    let blob = python_cache_with(&cache, other, &good, &sha256(&good));
    std::fs::write(&blob, &good[..500]).unwrap();
    hub.host(other, good, true);
    let (failed, events) = download(&models, &[other], &hub.hub(&cache));
    assert_eq!(failed, 1);
    let last = events[0].last().unwrap();
    assert!(matches!(last, DownloadEvent::Failed { message } if message.contains("cache is damaged")), "{last:?}");
    assert!(!models.path(other).exists());
}

#[test]
fn missing_files_and_denied_access_are_reported_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let hub = MockHub::start();
    let models = ModelsDir::new(dir.path().join("models"));
    let (failed, events) = download(&models, &[SMALL], &hub.hub(&dir.path().join("cache")));
    assert_eq!(failed, 1);
    assert!(listing(models.root()).is_empty(), "a failure leaves nothing behind: {:?}", listing(models.root()));
    let last = events[0].last().unwrap();
    assert!(
        matches!(last, DownloadEvent::Failed { message } if message.contains("stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/vae/config.json: not found (404)")),
        "{last:?}"
    );

    let big = payload(100_000, 10);
    hub.host(BIG, big.clone(), true);
    hub.state.lock().unwrap().token = Some("secret".into());
    let (failed, events) = download(&models, &[BIG], &hub.hub(&dir.path().join("cache")));
    assert_eq!(failed, 1);
    let last = events[0].last().unwrap();
    assert!(
        matches!(last, DownloadEvent::Failed { message } if message.contains("access denied (401)") && message.contains("HF_TOKEN")),
        "{last:?}"
    );

    // With the token it works, and the token never goes to the storage server.
    let with_token = Hub::new(HubConfig {
        endpoint: hub.endpoint.clone(),
        token: Some("secret".into()),
        cache_dir: Some(dir.path().join("cache")),
        offline: false,
    });
    let (failed, events) = download(&models, &[BIG], &with_token);
    assert_eq!(failed, 0, "{events:?}");
    let log = hub.log();
    assert!(log.iter().any(|l| l.starts_with("HEAD /FoivosPar") && l.ends_with("auth=Bearer secret")), "{log:?}");
    assert!(log.iter().filter(|l| l.starts_with("GET /cdn/")).all(|l| !l.contains("auth=")), "{log:?}");
}

fn arc2face(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_arc2face"));
    for name in ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "ARC2FACE_MODELS"] {
        command.env_remove(name);
    }
    command.args(args);
    command.envs(env.iter().copied()).output().unwrap()
}

#[test]
fn cli_download_honours_the_hub_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    let hub = MockHub::start();
    let (big, small) = (payload(600_000, 11), b"{}".to_vec());
    hub.host(BIG, big.clone(), true);
    hub.host(SMALL, small.clone(), false);
    let models = dir.path().join("models");
    let home = dir.path().join("hf-home");
    // The hub wants the token that `huggingface-cli login` left in HF_HOME.
    hub.state.lock().unwrap().token = Some("from-the-token-file".into());
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("token"), "from-the-token-file\n").unwrap();
    let env = [("HF_ENDPOINT", hub.endpoint.as_str()), ("HF_HOME", home.to_str().unwrap())];
    let args = ["models", "--models", models.to_str().unwrap(), "download", "--only", BIG.relative_path, "--only", SMALL.relative_path];
    let output = arc2face(&args, &env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("arc2face/diffusion_pytorch_model.safetensors: done, verified"), "{stderr}");
    assert_eq!(std::fs::read(models.join(BIG.relative_path)).unwrap(), big);

    // HF_HUB_OFFLINE with an empty cache: a clear failure and a non-zero exit.
    std::fs::remove_file(models.join(SMALL.relative_path)).unwrap();
    let output = arc2face(&args, &[("HF_ENDPOINT", hub.endpoint.as_str()), ("HF_HOME", home.to_str().unwrap()), ("HF_HUB_OFFLINE", "1")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("vae/config.json: FAILED") && stderr.contains("HF_HUB_OFFLINE"), "{stderr}");
}

/// A wheel (a zip) holding one file.
fn wheel_with(member: &str, bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file(member, zip::write::SimpleFileOptions::default()).unwrap();
    zip.write_all(bytes).unwrap();
    zip.finish().unwrap().into_inner()
}

#[test]
fn onnx_runtime_comes_from_the_package_index_checked_against_its_pin() {
    use arc2face_studio::models::onnxruntime::{PinnedLibrary, install};
    let dir = tempfile::tempdir().unwrap();
    let hub = MockHub::start();
    let library_bytes = payload(300_000, 12);
    let member = "onnxruntime/capi/libonnxruntime.so.1.31.1";
    let wheel = wheel_with(member, &library_bytes);
    let decoy = wheel_with(member, b"another platform");
    let entry = |name: &str, bytes: &[u8]| serde_json::json!({"filename": name, "url": hub.host_blob(bytes.to_vec()), "size": bytes.len(), "hashes": {"sha256": sha256(bytes)}});
    let page = serde_json::json!({"meta": {"api-version": "1.1"}, "files": [
        entry("onnxruntime-1.31.1-cp311-cp311-win_amd64.whl", &decoy),
        entry("onnxruntime-1.30.0-cp311-cp311-manylinux_2_28_x86_64.whl", &decoy),
        entry("onnxruntime-1.31.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", &wheel),
    ]});
    hub.serve_page("/simple/onnxruntime/", page.to_string());
    let index = format!("{}/simple", hub.endpoint);
    let pinned = |sha256: String| PinnedLibrary {
        wheel_tags: &["manylinux", "x86_64"],
        member: "onnxruntime/capi/libonnxruntime.so.1.31.1",
        file_name: "libonnxruntime.so.1.31.1",
        sha256: Box::leak(sha256.into_boxed_str()),
    };
    let (cancel, report) = (AtomicBool::new(false), |_| {});

    let installed = dir.path().join("ort");
    let path = install(&installed, &index, &pinned(sha256(&library_bytes)), &hub.hub(&dir.path().join("cache")), &cancel, &report).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), library_bytes);
    assert_eq!(listing(&installed), ["libonnxruntime.so.1.31.1"], "the wheel is not left behind");
    let requests = hub.log().len();
    install(&installed, &index, &pinned(sha256(&library_bytes)), &hub.hub(&dir.path().join("cache")), &cancel, &report).unwrap();
    assert_eq!(hub.log().len(), requests, "an installed library is not fetched again");

    // A library that is not the pinned build is refused and not left anywhere.
    let refused = dir.path().join("refused");
    let error = install(&refused, &index, &pinned("0".repeat(64)), &hub.hub(&dir.path().join("cache")), &cancel, &report).unwrap_err();
    assert!(error.to_string().contains("not the pinned"), "{error}");
    assert!(listing(&refused).is_empty(), "{:?}", listing(&refused));
}

#[test]
fn cancel_keeps_the_partial_file_for_later_and_puts_nothing_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let hub = MockHub::start();
    let big = payload(2_000_000, 13);
    hub.host(BIG, big.clone(), true);
    let models = ModelsDir::new(dir.path().join("models"));
    let part = partial_path(&models.path(BIG));
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, &big[..700_000]).unwrap();
    let events = Mutex::new(Vec::new());
    let options = DownloadOptions { parallel: 1, replace: false };
    let failed = download_all(&models, &[BIG], &hub.hub(&dir.path().join("cache")), options, &AtomicBool::new(true), &|_, e| {
        events.lock().unwrap().push(e)
    });
    assert_eq!(failed.failed, 0, "a cancel is not a failure");
    assert_eq!(events.into_inner().unwrap().last(), Some(&DownloadEvent::Cancelled));
    assert!(!models.path(BIG).exists());
    assert_eq!(std::fs::read(&part).unwrap(), &big[..700_000], "the partial file is kept as it was");
}

#[test]
fn a_partial_file_of_another_version_is_not_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let hub = MockHub::start();
    let big = payload(1_000_000, 14);
    hub.host(BIG, big.clone(), true);
    let models = ModelsDir::new(dir.path().join("models"));
    let part = partial_path(&models.path(BIG));
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, payload(400_000, 15)).unwrap();
    std::fs::write(lock_path(&models, BIG), sha256(b"the version before")).unwrap();
    let (failed, events) = download(&models, &[BIG], &hub.hub(&dir.path().join("cache")));
    assert_eq!(failed, 0, "{events:?}");
    assert_eq!(events[0][0], DownloadEvent::Started { total: 1_000_000, done: 0, from_cache: false });
    assert!(events[0].iter().all(|e| !matches!(e, DownloadEvent::Retrying { .. })), "no wasted attempt: {events:?}");
    assert_eq!(std::fs::read(models.path(BIG)).unwrap(), big);
}

#[test]
fn an_expired_storage_link_is_renewed_from_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let hub = MockHub::start();
    let big = payload(500_000, 16);
    hub.host(BIG, big.clone(), true);
    hub.fault(BIG, Fault::RefuseOnce);
    let models = ModelsDir::new(dir.path().join("models"));
    let (failed, events) = download(&models, &[BIG], &hub.hub(&dir.path().join("cache")));
    assert_eq!(failed, 0, "{events:?}");
    assert!(events[0].iter().any(|e| matches!(e, DownloadEvent::Retrying { message } if message.contains("refused the link (403)"))));
    assert_eq!(hub.log().iter().filter(|l| l.starts_with("HEAD ")).count(), 2, "a fresh HEAD for a fresh link: {:?}", hub.log());
    assert_eq!(std::fs::read(models.path(BIG)).unwrap(), big);
}

#[test]
fn one_downloader_per_file_and_wrong_files_are_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let hub = MockHub::start();
    let big = payload(300_000, 17);
    hub.host(BIG, big.clone(), true);
    let models = ModelsDir::new(dir.path().join("models"));
    std::fs::create_dir_all(models.path(BIG).parent().unwrap()).unwrap();

    // Another process is on it: refused, nothing touched.
    let held = std::fs::File::create(lock_path(&models, BIG)).unwrap();
    held.lock().unwrap();
    let (failed, events) = download(&models, &[BIG], &hub.hub(&dir.path().join("cache")));
    assert_eq!(failed, 1);
    assert!(
        matches!(events[0].last().unwrap(), DownloadEvent::Failed { message } if message.contains("being downloaded by another process"))
    );
    drop(held);

    // A truncated download is wrong by its recorded size and fetched again.
    let (failed, _) = download(&models, &[BIG], &hub.hub(&dir.path().join("cache")));
    assert_eq!(failed, 0);
    std::fs::write(models.path(BIG), &big[..1000]).unwrap();
    let (failed, events) = download(&models, &[BIG], &hub.hub(&dir.path().join("cache")));
    assert_eq!((failed, events[0].last().unwrap()), (0, &DownloadEvent::Finished));
    assert_eq!(std::fs::read(models.path(BIG)).unwrap(), big);

    // A file of the right size but wrong bytes (as `verify` finds) is replaced only when asked.
    let mut damaged = big.clone();
    damaged[10] ^= 1;
    std::fs::write(models.path(BIG), &damaged).unwrap();
    let (_, events) = download(&models, &[BIG], &hub.hub(&dir.path().join("cache")));
    assert_eq!(events[0], [DownloadEvent::AlreadyPresent]);
    let replace = DownloadOptions { parallel: 1, replace: true };
    let summary = download_all(&models, &[BIG], &hub.hub(&dir.path().join("cache")), replace, &AtomicBool::new(false), &|_, _| {});
    assert_eq!(summary.failed, 0);
    assert_eq!(std::fs::read(models.path(BIG)).unwrap(), big);
}

/// Offline, or behind a proxy that refuses: every file fails with one short reason, the hub is
/// not asked again for each of them, and the summary says once what to do.
#[test]
fn an_unreachable_hub_is_reported_once_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let models = ModelsDir::new(dir.path().join("models"));
    // Nothing listens on port 1: every connection is refused at once.
    let config =
        HubConfig { endpoint: "http://127.0.0.1:1".into(), token: None, cache_dir: Some(dir.path().join("cache")), offline: false };
    let started = std::time::Instant::now();
    let events = Mutex::new(Vec::new());
    let options = DownloadOptions { parallel: 2, replace: false };
    let summary = download_all(&models, &models::ALL_FILES, &Hub::new(config), options, &AtomicBool::new(false), &|_, event| {
        events.lock().unwrap().push(event)
    });
    assert_eq!(summary.failed, models::ALL_FILES.len());
    let message = summary.unreachable.expect("one message for the whole download");
    assert!(message.contains("cannot be reached") && message.contains("HF_ENDPOINT") && message.contains("Change folder"), "{message}");
    for event in events.into_inner().unwrap() {
        if let DownloadEvent::Failed { message } = event {
            assert_eq!(message, "not in the Hugging Face cache, and the hub cannot be reached");
        }
    }
    assert!(started.elapsed().as_secs() < 10, "no retries per file");
}
