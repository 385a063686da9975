//! A server process that cannot outlive its test: it runs under a small shell that holds a
//! pipe from the test process and stops the server when the pipe closes, whether the test
//! dropped its handle, panicked, or was killed.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};

/// A supervised server process.
pub(crate) struct Supervised {
    child: Option<Child>,
    watchdog: Option<ChildStdin>,
}

impl Supervised {
    /// Runs `program` with `arguments` under `sh` (itself run by `runner`, e.g. `runuser -u
    /// postgres --`, or directly when `None`), its output appended to `log`; when the pipe
    /// closes, the shell sends it `signal` (`KILL`, `INT`) and waits for it.
    pub(crate) fn spawn<I, S>(
        runner: Option<Command>,
        program: &OsStr,
        arguments: I,
        signal: &str,
        log: &Path,
    ) -> Supervised
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let script = format!(
            r#""$@" </dev/null >>"$SUPERVISED_LOG" 2>&1 & server=$!
read _ignored
kill -{signal} "$server" 2>/dev/null
wait "$server" 2>/dev/null
exit 0"#
        );
        let mut command = match runner {
            Some(mut runner) => {
                runner.arg("sh");
                runner
            }
            None => Command::new("sh"),
        };
        let mut child = command
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(program)
            .args(arguments)
            .env("SUPERVISED_LOG", log)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("sh starts {}: {error}", program.to_string_lossy()));
        let watchdog = child.stdin.take();
        Supervised {
            child: Some(child),
            watchdog,
        }
    }

    /// The exit status, if the server already ended on its own.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// Stops the server and waits for the shell.
    pub(crate) fn stop(&mut self) {
        drop(self.watchdog.take());
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}
