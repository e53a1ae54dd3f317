//! Test harness: real PostgreSQL clusters (15, 17, 18) and a real S3 server (moto), started on
//! free ports the first time a test needs them and shared by every test in this process (each
//! test uses its own database, bucket or prefix). Each service is watched by a small process
//! that stops it when this test process ends, however it ends.
//!
//! Where the binaries are comes from `scripts/test-deps.sh` (`PGSC_TEST_*` variables).
//!
//! One file per concern: [`pg`] (PostgreSQL clusters), [`s3`] (S3 servers), [`net`] (proxies
//! that slow, cut or fault traffic), [`http`] (fake Slack and webhook endpoints), [`sidecar`]
//! (the binary, its runs and its daemon). Everything is re-exported here, so tests name
//! `harness::…` only.

mod http;
mod net;
mod pg;
mod s3;
mod sidecar;

pub use http::*;
pub use net::*;
pub use pg::*;
pub use s3::*;
pub use sidecar::*;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const PG_PASSWORD: &str = "harness-superuser-pw";

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through scripts/test.sh (see README)")
    }))
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `cleanup` (a shell command) once this test process has exited.
fn on_exit(cleanup: &str) {
    let script = format!(
        "while kill -0 {} 2>/dev/null; do sleep 0.5; done; {cleanup}",
        std::process::id()
    );
    // `setsid -f` detaches the watcher and returns at once.
    Command::new("setsid")
        .args(["-f", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn cleanup watcher");
}

pub fn postgres_ids() -> Option<(u32, u32)> {
    // initdb refuses root, so as root the clusters run as `postgres`.
    let me = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a `postgres` user exists")
    };
    Some((id("-u"), id("-g")))
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique within this test process: `<hint>_<n>`.
pub fn unique(hint: &str) -> String {
    format!("{hint}_{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Backup keys have one-second resolution and a stored backup is never overwritten, so a test
/// that takes a second backup of the same database waits for the next key.
pub fn next_key_second() {
    std::thread::sleep(Duration::from_millis(1100));
}

/// Waits up to `secs` for `cond`.
pub fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A tmpfs of a few MiB (the tests run as root), for a disk that fills up; unmounted on drop.
pub struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    pub fn mount(mib: u32) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0777"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs (needs root): {status}");
        on_exit(&format!("umount '{}' 2>/dev/null", dir.path().display()));
        SmallFs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
