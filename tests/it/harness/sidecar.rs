//! The pgsidecar binary: configured runs, their output, and a running daemon.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{wait_until, Pg, PG_PASSWORD};

/// Output of one sidecar run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with both streams unless the exit code is `code`.
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// The pgsidecar binary with a clean environment pointing at a test database and bucket.
#[must_use = "a Sidecar does nothing until .run() or .spawn()"]
pub struct Sidecar {
    cmd: Command,
}

impl Sidecar {
    /// Configured from environment variables only, as a container would be.
    pub fn new(pg: &Pg, db: &str, s3_endpoint: &str, bucket: &str, prefix: &str) -> Sidecar {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgsidecar"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", "/nonexistent")
            .env("RUST_LOG", "info")
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", pg.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGPASSWORD", PG_PASSWORD)
            .env("PGDATABASE", db)
            .env("PGSIDECAR_STORAGE__URL", format!("s3://{bucket}/{prefix}"))
            .env("PGSIDECAR_TOOLS__BIN_DIRS", &pg.client_bin)
            .env("AWS_ENDPOINT_URL", s3_endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            // Commands record outcomes in the status file too: one per test configuration and
            // test run, so parallel tests and earlier runs never see each other's records.
            .env(
                "PGSIDECAR_HEALTH__STATUS_FILE",
                std::env::temp_dir().join(format!(
                    "pgsidecar-it-{}-{bucket}-{}-{db}.status.json",
                    std::process::id(),
                    prefix.replace('/', "_")
                )),
            );
        Sidecar { cmd }
    }

    /// The bare binary with an empty environment.
    pub fn bare() -> Sidecar {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgsidecar"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        Sidecar { cmd }
    }

    /// The same command run through another path to the binary (a link named after a
    /// command, as the image installs them).
    pub fn invoked_as(self, program: &Path) -> Sidecar {
        let mut cmd = Command::new(program);
        cmd.env_clear();
        for (k, v) in self.cmd.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        cmd.args(self.cmd.get_args());
        Sidecar { cmd }
    }

    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Sidecar {
        self.cmd.env(k, v);
        self
    }

    pub fn env_remove(mut self, k: &str) -> Sidecar {
        self.cmd.env_remove(k);
        self
    }

    pub fn args(mut self, args: &[&str]) -> Sidecar {
        self.cmd.args(args);
        self
    }

    pub fn run(mut self) -> Run {
        Run::from(self.cmd.output().unwrap())
    }

    /// Runs `backup`, which must succeed, and returns the key it printed.
    pub fn backup_key(self) -> String {
        let run = self.args(&["backup"]).run().expect_code(0);
        run.stdout.trim().to_string()
    }

    pub fn spawn(mut self) -> std::process::Child {
        self.cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// Children of `parent` whose command name is `name`, from /proc.
pub fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // comm is in parentheses and may contain spaces; ppid follows the closing one.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid: u32 = stat[close + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if comm == name && ppid == parent {
            out.push(pid);
        }
    }
    out
}

/// A running `pgsidecar run`, its stderr collected line by line.
pub struct Daemon {
    pub child: std::process::Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn start(sidecar: Sidecar) -> Daemon {
        let mut child = sidecar.args(&["run"]).spawn();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                l.lock().unwrap().push(line);
            }
        });
        Daemon { child, lines }
    }

    /// Waits up to `secs` for a stderr line containing `needle`.
    pub fn wait_for(&self, needle: &str, secs: u64) -> bool {
        wait_until(secs, || {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
        })
    }

    pub fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    /// Waits up to `secs` for the exit code; `None` if still running.
    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
