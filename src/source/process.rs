//! Dump source, the client processes: the one way the sidecar runs `pg_dump`, `pg_dumpall`,
//! `pg_restore`, `psql`, `pg_basebackup` and `pg_receivewal` as children, with stderr piped and its last lines kept for the error
//! message, and the one wording of how such a process ended.
//!
//! Invariant: a child is never left behind. It is spawned with kill-on-drop, so dropping a
//! [`Child`] (a cancelled backup or restore, a failed stream) kills it and the runtime reaps it;
//! and success is only what [`Child::wait`] reports after the process exited with status 0, never
//! the end of its output.

use std::collections::VecDeque;
use std::io;
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

/// How many of a tool's last stderr lines an error carries.
const STDERR_TAIL_LINES: usize = 20;

/// The log target a tool's stderr lines are echoed to, at debug level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogAs {
    /// Target `pg_dump` (pg_dump, pg_dumpall).
    PgDump,
    /// Target `pg_restore` (pg_restore, and psql when it replays pg_restore's script).
    PgRestore,
    /// Target `wal` (pg_receivewal, pg_basebackup).
    Wal,
}

/// How a child ended, when it did not succeed.
#[derive(Debug)]
pub enum Exit {
    /// It exited with this non-zero status.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// Neither a status nor a signal was reported.
    Abnormal,
    /// Waiting for it failed; it was then killed.
    Unwaited(io::Error),
}

impl Exit {
    /// How `status` ended the process, or `None` when it succeeded.
    pub fn of(status: ExitStatus) -> Option<Exit> {
        use std::os::unix::process::ExitStatusExt;
        if status.success() {
            return None;
        }
        Some(match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(sig)) => Exit::Signal(sig),
            _ => Exit::Abnormal,
        })
    }

    /// The phrase that follows the tool's name: `pg_dump exited with status 1`,
    /// `pg_dump was killed by signal 9`.
    pub fn sentence(&self) -> String {
        match self {
            Exit::Code(code) => format!("exited with status {code}"),
            Exit::Signal(sig) => format!("was killed by signal {sig}"),
            Exit::Abnormal => "ended abnormally".to_string(),
            Exit::Unwaited(e) => format!("could not be waited for: {e}"),
        }
    }

    /// The phrase that stands alone, in parentheses after "failed": `exit status 1`,
    /// `killed by signal 9`.
    pub fn noun(&self) -> String {
        match self {
            Exit::Code(code) => format!("exit status {code}"),
            Exit::Signal(sig) => format!("killed by signal {sig}"),
            Exit::Abnormal => "ended abnormally".to_string(),
            Exit::Unwaited(e) => format!("could not be waited for: {e}"),
        }
    }
}

/// A child that did not succeed: how it ended, and its last stderr lines.
#[derive(Debug)]
pub struct Failure {
    /// How it ended.
    pub exit: Exit,
    /// Its last stderr lines, oldest first.
    pub stderr: Vec<String>,
}

/// `: line | line` for a message ending in a tool's stderr lines; empty without any.
pub fn stderr_suffix(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!(": {}", lines.join(" | "))
    }
}

/// A running client tool whose stderr is being collected. Dropping it kills the process.
#[derive(Debug)]
pub struct Child {
    inner: tokio::process::Child,
    stderr: JoinHandle<Vec<String>>,
}

impl Child {
    /// Spawns `cmd` with stderr piped and kill-on-drop; its stderr lines are echoed to `log` and
    /// the last ones kept. Stdin and stdout are as `cmd` set them.
    pub fn spawn(cmd: &mut Command, log: LogAs) -> io::Result<Child> {
        let mut inner = cmd.stderr(Stdio::piped()).kill_on_drop(true).spawn()?;
        let stderr = tokio::spawn(collect_tail(inner.stderr.take(), log));
        Ok(Child { inner, stderr })
    }

    /// The child's stdin, when `cmd` piped it (once).
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.inner.stdin.take()
    }

    /// The child's stdout, when `cmd` piped it (once).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.inner.stdout.take()
    }

    /// Waits for the process to exit and for its stderr to close. Success (status 0) returns the
    /// last stderr lines; anything else is a [`Failure`] carrying them.
    pub async fn wait(mut self) -> Result<Vec<String>, Failure> {
        let exit = match self.inner.wait().await {
            Ok(status) => Exit::of(status),
            Err(e) => {
                // Not knowing whether it still runs, make sure it does not: its stderr then
                // closes too.
                let _ = self.inner.start_kill();
                Some(Exit::Unwaited(e))
            }
        };
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        match exit {
            None => Ok(stderr),
            Some(exit) => Err(Failure { exit, stderr }),
        }
    }
}

type Waiting =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<String>, Failure>> + Send>>;

/// A child's stdout that ends in an error unless the child exited with status 0: the end of
/// the output is never taken for success.
pub struct CheckedOutput {
    tool: &'static str,
    stdout: ChildStdout,
    exit: Option<Waiting>,
    failed: bool,
}

impl CheckedOutput {
    /// The stdout of `child` (spawned with a piped stdout), named `tool` in errors.
    pub fn new(tool: &'static str, mut child: Child) -> CheckedOutput {
        let stdout = child.take_stdout().expect("stdout is piped");
        CheckedOutput {
            tool,
            stdout,
            exit: Some(Box::pin(child.wait())),
            failed: false,
        }
    }
}

impl tokio::io::AsyncRead for CheckedOutput {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::{ready, Poll};
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(Err(io::Error::other(format!("{} failed", this.tool))));
        }
        let Some(exit) = this.exit.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let before = buf.filled().len();
        ready!(std::pin::Pin::new(&mut this.stdout).poll_read(cx, buf))?;
        if buf.filled().len() > before || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let result = ready!(exit.as_mut().poll(cx));
        this.exit = None;
        match result {
            Ok(_) => Poll::Ready(Ok(())),
            Err(f) => {
                this.failed = true;
                Poll::Ready(Err(io::Error::other(format!(
                    "{} {}{}",
                    this.tool,
                    f.exit.sentence(),
                    stderr_suffix(&f.stderr)
                ))))
            }
        }
    }
}

/// Reads `pipe` to its end, echoing each line to `log` and keeping the last
/// [`STDERR_TAIL_LINES`]. Undecodable bytes are replaced rather than ending the read, so the
/// tool never blocks on a full pipe.
async fn collect_tail(pipe: Option<ChildStderr>, log: LogAs) -> Vec<String> {
    let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
    let Some(pipe) = pipe else {
        return Vec::new();
    };
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let line = String::from_utf8_lossy(text).into_owned();
        match log {
            LogAs::PgDump => tracing::debug!(target: "pg_dump", "{line}"),
            LogAs::PgRestore => tracing::debug!(target: "pg_restore", "{line}"),
            LogAs::Wal => tracing::debug!(target: "wal", "{line}"),
        }
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    Vec::from(tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script]).stdin(Stdio::null());
        cmd
    }

    #[test]
    fn statuses_keep_their_wording() {
        let code = Exit::of(ExitStatus::from_raw(1 << 8)).unwrap();
        assert_eq!(code.sentence(), "exited with status 1");
        assert_eq!(code.noun(), "exit status 1");
        let sig = Exit::of(ExitStatus::from_raw(9)).unwrap();
        assert_eq!(sig.sentence(), "was killed by signal 9");
        assert_eq!(sig.noun(), "killed by signal 9");
        assert!(Exit::of(ExitStatus::from_raw(0)).is_none());
        assert_eq!(stderr_suffix(&[]), "");
        assert_eq!(stderr_suffix(&["a".into(), "b".into()]), ": a | b");
    }

    #[tokio::test]
    async fn a_failure_carries_the_last_stderr_lines() {
        let mut cmd = sh("i=0; while [ $i -lt 30 ]; do echo \"line $i\" >&2; i=$((i+1)); done; printf 'bad\\377\\r\\n' >&2; exit 3");
        let f = Child::spawn(&mut cmd, LogAs::PgDump)
            .unwrap()
            .wait()
            .await
            .unwrap_err();
        assert_eq!(f.exit.sentence(), "exited with status 3");
        assert_eq!(f.stderr.len(), STDERR_TAIL_LINES);
        assert_eq!(f.stderr[0], "line 11");
        assert_eq!(f.stderr.last().unwrap(), "bad\u{fffd}");
    }

    #[tokio::test]
    async fn success_returns_stderr_and_drop_kills() {
        let mut cmd = sh("echo note >&2");
        let lines = Child::spawn(&mut cmd, LogAs::PgRestore)
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(lines, ["note"]);
        let mut cmd = sh("exec sleep 30");
        let child = Child::spawn(&mut cmd, LogAs::PgRestore).unwrap();
        let pid = child.inner.id().unwrap();
        drop(child);
        let gone = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s.contains(") Z "))
        });
        assert!(gone, "child {pid} still runs after drop");
    }
}
