//! What `voting up` keeps on disk: the cookie key (which forges any voter) and every vote.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::{UpBinary, eventually};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_its_files_are_private_whatever_the_umask() {
    let data = tempfile::tempdir().unwrap();
    // An older start left the directory and a file world-readable.
    let dir = data.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("store.sqlite"), b"").unwrap();
    std::fs::set_permissions(dir.join("store.sqlite"), std::fs::Permissions::from_mode(0o644)).unwrap();

    let up = UpBinary::start_in(data, &["sh", "-c", "umask 022 && exec \"$@\"", "sh"], &[], &[]);
    let http = reqwest::Client::new();
    let voted = eventually(Duration::from_secs(20), async || {
        let vote = http
            .post(format!("http://{}/api/vote", up.vote))
            .json(&serde_json::json!({"vote": "a"}))
            .send()
            .await;
        vote.is_ok_and(|r| r.status() == 202)
    })
    .await;
    assert!(voted, "a vote is accepted: {}", up.process.log());

    assert_eq!(mode(&dir), 0o700, "the data directory");
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    for name in ["cookie-secret", "queue.sqlite", "queue.sqlite-wal", "store.sqlite", "store.sqlite-wal"] {
        assert!(files.contains(&dir.join(name)), "{name} exists: {files:?}");
    }
    for file in files {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

#[test]
fn a_cookie_key_file_that_is_not_a_key_stops_the_start_instead_of_being_replaced() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("cookie-secret"), b"short").unwrap();
    let mut up = UpBinary::spawn(&data, &[], &[], &[]);
    let exited = voting_testkit::wait_until(Duration::from_secs(20), || !up.is_running());
    assert!(exited, "voting up refuses to start");
    assert!(up.log().contains("not a cookie key"), "says why: {}", up.log());
    assert_eq!(std::fs::read(dir.join("cookie-secret")).unwrap(), b"short", "the file is left as it was");
}

#[test]
fn a_cookie_secret_with_less_than_32_bytes_of_entropy_is_refused() {
    for weak in ["sixteen-chars-xx", &"ab".repeat(24)] {
        let data = tempfile::tempdir().unwrap();
        let mut up = UpBinary::spawn(&data, &[], &[], &[("COOKIE_SECRET", weak)]);
        let exited = voting_testkit::wait_until(Duration::from_secs(20), || !up.is_running());
        assert!(exited, "voting up refuses to start with COOKIE_SECRET={weak}");
        assert!(up.log().contains("it needs 32"), "says why: {}", up.log());
        assert!(!up.log().contains(weak), "the secret is not printed: {}", up.log());
    }
}
