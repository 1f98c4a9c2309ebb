//! Children in their own process group, guarded by a watchdog.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::wait_until;

/// The signals this crate sends, named as the `kill` command spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Kill,
    Term,
    Int,
    Quit,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Kill => "KILL",
            Signal::Term => "TERM",
            Signal::Int => "INT",
            Signal::Quit => "QUIT",
        }
    }
}

/// Waits for EOF on stdin, then SIGKILLs process group `$1` and removes the
/// directory `$2`, if given.
///
/// Only the test process holds the write end of that stdin, so the kernel
/// closes it exactly when the test process dies, however it dies. Signals are
/// ignored so that a Ctrl-C or hangup cannot take the watchdog down first. The
/// removal is retried because orphaned PostgreSQL backends (which are not in
/// the group) may still be exiting and writing files.
const WATCHDOG_SCRIPT: &str = r#"
trap '' HUP INT TERM
read -r line
kill -s KILL -- -"$1"
if [ -n "$2" ]; then
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        rm -rf -- "$2" && break
        sleep 0.2
    done
fi
"#;

/// A child process that leads its own process group, plus a watchdog that
/// SIGKILLs that group if the test process dies without running destructors.
///
/// The own group lets us kill the child together with anything it forked
/// (e.g. a Redis AOF rewrite), and keeps terminal signals meant for the test
/// harness away from it; the watchdog covers the cleanup those signals used to
/// provide. Dropping it SIGKILLs the group and reaps the child.
#[derive(Debug)]
pub(crate) struct Supervised {
    child: Child,
    watchdog: Option<Child>,
}

impl Supervised {
    /// Spawns `cmd` as the leader of a new process group and starts its
    /// watchdog, which also removes `cleanup_dir` (the temp dir that the
    /// test process can no longer remove) if the test process dies.
    pub(crate) fn spawn(cmd: &mut Command, cleanup_dir: &Path) -> io::Result<Self> {
        let child = cmd.process_group(0).spawn()?;
        // Best effort: without a watchdog the child still dies when dropped,
        // it can merely outlive a test process that crashes.
        let watchdog = spawn_watchdog(child.id(), cleanup_dir).ok();
        Ok(Self { child, watchdog })
    }

    /// The child's pid, which is also its process group id.
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the child has not exited yet (reaps it if it has).
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The exit status if the child has exited.
    pub(crate) fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` to the child only, or to its whole process group.
    ///
    /// Does nothing once the child has been reaped: its pid may have been
    /// recycled by then. Before that, the zombie keeps the pid (and group id)
    /// reserved, so the signal cannot hit a stranger.
    pub(crate) fn signal(&mut self, signal: Signal, whole_group: bool) {
        if !self.is_running() {
            return;
        }
        if signal == Signal::Kill && !whole_group {
            let _ = self.child.kill();
            return;
        }
        let target = if whole_group {
            // A negative pid addresses the process group.
            format!("-{}", self.id())
        } else {
            self.id().to_string()
        };
        // `--` so that a negative target is not parsed as an option.
        let _ = Command::new("kill")
            .args(["-s", signal.name(), "--", &target])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Waits up to `timeout` for the child to exit; returns its status if it
    /// did.
    pub(crate) fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(timeout, || !self.is_running());
        self.exit_status()
    }

    /// Sends `signal`, waits up to `grace` for the child to exit, then
    /// SIGKILLs its group; always reaps the child and returns its status.
    pub(crate) fn shutdown(
        &mut self,
        signal: Signal,
        whole_group: bool,
        grace: Duration,
    ) -> Option<ExitStatus> {
        // Dismissed first: once the child is reaped, the watchdog's group id
        // could be recycled and must never be signalled.
        self.dismiss_watchdog();
        self.signal(signal, whole_group);
        if let Some(status) = self.wait_timeout(grace) {
            return Some(status);
        }
        self.signal(Signal::Kill, true);
        // In case the `kill` command itself failed.
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    fn dismiss_watchdog(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            // SIGKILL cannot be trapped, and it dies before reading EOF.
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.shutdown(Signal::Kill, true, Duration::from_secs(10));
    }
}

fn spawn_watchdog(pgid: u32, cleanup_dir: &Path) -> io::Result<Child> {
    Command::new("sh")
        .args(["-c", WATCHDOG_SCRIPT, "voting-testkit-watchdog"])
        .arg(pgid.to_string())
        .arg(cleanup_dir)
        // The pipe's write end stays in `Child::stdin` for the watchdog's
        // lifetime; std opens it close-on-exec, so no other child inherits it.
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own group, so a Ctrl-C aimed at the test never reaches it.
        .process_group(0)
        .spawn()
}
