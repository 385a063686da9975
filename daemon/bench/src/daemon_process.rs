//! The release `tandem` binary as a child process, as in production.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub(crate) struct DaemonProcess {
    child: Child,
    pub(crate) url: String,
}

impl DaemonProcess {
    pub(crate) fn start(
        binary: &str,
        config: &Path,
        port: u16,
        log: &Path,
    ) -> anyhow::Result<DaemonProcess> {
        let child = Command::new(binary)
            .args(["run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        let daemon = DaemonProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        while ureq::get(&format!("{}/healthz", daemon.url))
            .call()
            .is_err()
        {
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the daemon did not answer within 60 s; see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(daemon)
    }

    pub(crate) fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        Ok(ureq::get(&format!("{}{path}", self.url))
            .call()?
            .body_mut()
            .read_json()?)
    }

    pub(crate) fn get_text(&self, path: &str) -> anyhow::Result<String> {
        Ok(ureq::get(&format!("{}{path}", self.url))
            .call()?
            .body_mut()
            .read_to_string()?)
    }

    /// SIGKILL: no chance to flush or leave the group.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Peak resident set size (VmHWM) in MiB.
    pub(crate) fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        peak_rss_mib(self.child.id())
    }
}

/// Peak resident set size (VmHWM) of process `pid` in MiB.
pub(crate) fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM missing from /proc status")?;
    Ok(kib / 1024.0)
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
