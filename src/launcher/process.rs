//! A child process that can be signalled, waited for with a deadline, and
//! awaited — from blocking code (the test harness) and async code (`kairos
//! dev`) alike.
//!
//! [`ChildProcess::spawn`] starts the command and hands the `std` child to a
//! watcher thread. The thread waits for the exit *without reaping*
//! (`waitid(WNOWAIT)`), then, holding the status lock, reaps the child and
//! records its status, and wakes every waiter (a condition variable for
//! blocking waits, a [`Notify`] for async ones).
//!
//! # Invariants
//!
//! * **A signal never reaches a stranger.** Signals are sent while holding
//!   the status lock and only while no status is recorded; the child is
//!   reaped under that same lock, so until then its pid cannot be reused.
//! * **Every exit is seen.** The status is recorded once, by the watcher, and
//!   every wait reads it from there; nothing else reaps the child.
//! * **Nothing outlives its owner.** Dropping a [`ChildProcess`] kills the
//!   child (SIGKILL) if it still runs and joins the watcher.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! * One thread per child; fine for the handful of nodes a launcher starts.
//! * If something else in the process reaps the child first (e.g. SIGCHLD
//!   set to `SIG_IGN`), its status is unknown and recorded as exit code 255.
//! * Only the child itself is signalled, not its process group.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use tokio::sync::Notify;

/// The raw wait status recorded when the child's real status is unknown: exit code 255.
const UNKNOWN_EXIT: i32 = 255 << 8;

/// The exit status and its waiters, shared by the owner and the watcher thread.
#[derive(Default)]
struct ExitRecord {
    /// `None` while the child runs; set once, by the watcher, as it reaps the child.
    status: Mutex<Option<ExitStatus>>,
    /// Wakes blocking waiters when the status is recorded.
    recorded: Condvar,
    /// Wakes async waiters when the status is recorded.
    notify: Notify,
}

impl ExitRecord {
    fn lock(&self) -> MutexGuard<'_, Option<ExitStatus>> {
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How [`ChildProcess::terminate`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped {
    /// The child's exit status.
    pub status: ExitStatus,
    /// Whether the grace period ran out and the child was killed (SIGKILL).
    pub forced: bool,
}

/// A started child process; killed when dropped.
pub struct ChildProcess {
    /// The child's pid (valid for signals only while no exit is recorded).
    pid: Pid,
    /// Where the watcher records the exit.
    exit: Arc<ExitRecord>,
    /// The watcher thread; joined on drop.
    watcher: Option<JoinHandle<()>>,
}

impl ChildProcess {
    /// Starts `command` and begins watching for its exit.
    pub fn spawn(command: &mut Command) -> io::Result<ChildProcess> {
        let mut child = command.spawn()?;
        let pid = Pid::from_raw(child.id() as i32);
        let exit = Arc::new(ExitRecord::default());
        let record = exit.clone();
        let watcher = std::thread::Builder::new()
            .name(format!("watch-{pid}"))
            .spawn(move || {
                // Wait for the exit but leave the child a zombie, so its pid
                // stays taken until the status is recorded under the lock.
                while let Err(Errno::EINTR) =
                    waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
                {}
                let mut status = record.lock();
                let reaped = child
                    .wait()
                    .unwrap_or_else(|_| ExitStatus::from_raw(UNKNOWN_EXIT));
                *status = Some(reaped);
                drop(status);
                record.recorded.notify_all();
                record.notify.notify_waiters();
            });
        match watcher {
            Ok(watcher) => Ok(ChildProcess {
                pid,
                exit,
                watcher: Some(watcher),
            }),
            Err(e) => {
                // No watcher: the child must not run unobserved.
                let _ = kill(pid, Signal::SIGKILL);
                Err(e)
            }
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// The exit status, once the child has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.lock()
    }

    /// Whether the child has not exited yet (a stopped child still runs).
    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// Sends `signal` unless the child has exited; returns whether it was sent.
    pub fn signal(&self, signal: Signal) -> io::Result<bool> {
        let status = self.exit.lock();
        if status.is_some() {
            return Ok(false);
        }
        kill(self.pid, signal).map_err(io::Error::from)?;
        Ok(true)
    }

    /// Sends SIGTERM (a planned stop) unless the child has exited, without
    /// waiting; returns whether it was sent.
    pub fn request_stop(&self) -> io::Result<bool> {
        self.signal(Signal::SIGTERM)
    }

    /// Blocks until the child exits or `timeout` passes; `None` on timeout.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let status = self.exit.lock();
        let (status, _) = self
            .exit
            .recorded
            .wait_timeout_while(status, timeout, |s| s.is_none())
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *status
    }

    /// Blocks until the child exits.
    pub fn wait(&self) -> ExitStatus {
        let status = self.exit.lock();
        let status = self
            .exit
            .recorded
            .wait_while(status, |s| s.is_none())
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        status.expect("recorded")
    }

    /// Resolves when the child exits.
    pub async fn exited(&self) -> ExitStatus {
        loop {
            // Registered before the check, so a status recorded in between still wakes it.
            let recorded = self.exit.notify.notified();
            if let Some(status) = self.exit_status() {
                return status;
            }
            recorded.await;
        }
    }

    /// kill -9, then waits for the exit (a stopped child dies of SIGKILL too).
    pub fn kill(&self) -> ExitStatus {
        let _ = self.signal(Signal::SIGKILL);
        self.wait()
    }

    /// SIGTERM, then waits up to `grace` for the exit; kills the child if it is still running then.
    pub fn terminate(&self, grace: Duration) -> Stopped {
        let _ = self.signal(Signal::SIGTERM);
        match self.wait_timeout(grace) {
            Some(status) => Stopped {
                status,
                forced: false,
            },
            None => Stopped {
                status: self.kill(),
                forced: true,
            },
        }
    }

    /// [`ChildProcess::terminate`] for async callers.
    pub async fn terminate_async(&self, grace: Duration) -> Stopped {
        let _ = self.signal(Signal::SIGTERM);
        match tokio::time::timeout(grace, self.exited()).await {
            Ok(status) => Stopped {
                status,
                forced: false,
            },
            Err(_) => {
                let _ = self.signal(Signal::SIGKILL);
                Stopped {
                    status: self.exited().await,
                    forced: true,
                }
            }
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.signal(Signal::SIGKILL);
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> ChildProcess {
        ChildProcess::spawn(Command::new("sh").args(["-c", script])).unwrap()
    }

    #[test]
    fn a_natural_exit_is_recorded_with_its_code() {
        let child = sh("exit 3");
        assert_eq!(child.wait().code(), Some(3));
        assert!(!child.is_running());
        assert!(
            !child.signal(Signal::SIGTERM).unwrap(),
            "no signal after the exit"
        );
    }

    #[test]
    fn terminate_stops_a_cooperative_child_without_force() {
        let child = sh("exec sleep 30");
        assert_eq!(child.wait_timeout(Duration::from_millis(50)), None);
        let stopped = child.terminate(Duration::from_secs(10));
        assert!(!stopped.forced);
        assert_eq!(stopped.status.signal(), Some(Signal::SIGTERM as i32));
    }

    #[test]
    fn terminate_kills_a_child_that_ignores_sigterm() {
        use std::io::BufRead;
        let (reader, writer) = std::io::pipe().unwrap();
        // An ignored signal stays ignored across exec; the line says the trap is in place.
        let mut command = Command::new("sh");
        command
            .args(["-c", "trap '' TERM; echo trapped; exec sleep 30"])
            .stdout(writer);
        let child = ChildProcess::spawn(&mut command).unwrap();
        drop(command);
        let mut line = String::new();
        std::io::BufReader::new(reader).read_line(&mut line).unwrap();
        assert_eq!(line, "trapped\n");
        let stopped = child.terminate(Duration::from_millis(200));
        assert!(stopped.forced);
        assert_eq!(stopped.status.signal(), Some(Signal::SIGKILL as i32));
    }

    #[test]
    fn a_stopped_child_runs_on_after_sigcont_and_dies_of_sigkill() {
        let child = sh("exec sleep 30");
        assert!(child.signal(Signal::SIGSTOP).unwrap());
        assert!(child.is_running(), "a stopped child has not exited");
        assert!(child.signal(Signal::SIGCONT).unwrap());
        assert!(child.signal(Signal::SIGSTOP).unwrap());
        assert_eq!(child.kill().signal(), Some(Signal::SIGKILL as i32));
    }

    #[tokio::test]
    async fn async_waiters_see_the_exit() {
        let child = sh("exec sleep 30");
        let stopped = child.terminate_async(Duration::from_secs(10)).await;
        assert!(!stopped.forced);
        assert_eq!(child.exited().await, stopped.status);
    }

    #[test]
    fn dropping_kills_the_child() {
        let child = sh("exec sleep 30");
        let pid = child.pid;
        drop(child);
        assert_eq!(kill(pid, None), Err(Errno::ESRCH), "the child is gone and reaped");
    }
}
