//! The binary under test, run as a child with its output in a log file.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use tempfile::TempDir;

use crate::child::{Signal, Supervised};
use crate::new_temp_dir;

/// How long [`Process::terminate`] waits for a graceful exit before SIGKILL.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(30);

/// A child process of the binary under test (e.g. the `voting` binary),
/// started with env vars and args, stdout+stderr captured to a log file in a
/// temp dir; killed (SIGKILL) on drop.
///
/// It leads its own process group, and [`kill`](Self::kill) and drop kill the
/// whole group, so helpers it spawned die with it.
#[derive(Debug)]
pub struct Process {
    child: Supervised,
    log_path: PathBuf,
    /// Holds the log; declared after `child` so the process is dead before
    /// the dir is removed.
    _dir: TempDir,
}

impl Process {
    /// Spawns `program` with `args`, the test's environment plus `envs`, stdin
    /// from /dev/null, and stdout and stderr both appended to one log file
    /// (read it with [`log`](Self::log)).
    ///
    /// This does not wait for the program to be ready: poll for that with
    /// [`wait_until`](crate::wait_until).
    pub fn spawn(program: impl AsRef<OsStr>, args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<Self> {
        let program = program.as_ref();
        let dir = new_temp_dir("process-").context("create a temp dir for the process log")?;
        let log_path = dir.path().join("output.log");
        // Append mode, so stdout and stderr writes interleave instead of
        // overwriting each other at separate offsets.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        let child = Supervised::spawn(
            Command::new(program)
                .args(args)
                .envs(envs.iter().copied())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
            dir.path(),
        )
        .with_context(|| format!("spawn {}", program.display()))?;
        Ok(Self { child, log_path, _dir: dir })
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs the process (and its process group) and waits for it, like a
    /// crash. No-op if it already exited.
    pub fn kill(&mut self) {
        self.child.shutdown(Signal::Kill, true, TERMINATE_TIMEOUT);
    }

    /// Sends SIGTERM and waits up to 30 s for the process to exit (then
    /// SIGKILLs its group); returns its exit status, which shows the signal
    /// if it had to be killed. If it had already exited, returns that status.
    /// `None` only if the status could not be collected.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.child.shutdown(Signal::Term, false, TERMINATE_TIMEOUT)
    }

    /// Everything the process wrote to stdout and stderr so far (invalid
    /// UTF-8 replaced).
    pub fn log(&self) -> String {
        fs::read(&self.log_path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default()
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }
}
