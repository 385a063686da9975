//! Real Kafka-protocol broker processes for tests: librdkafka's mock cluster (the default)
//! and tansu (compatibility). Each test starts its own on free loopback ports.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_for};

/// A running broker.
pub trait Broker {
    /// `bootstrap.servers`.
    fn bootstrap(&self) -> &str;
}

/// `tandem-mock-broker`, a process of its own so the daemon can be killed without it.
pub struct MockBroker {
    child: Child,
    control: ChildStdin,
    bootstrap: String,
}

impl MockBroker {
    /// Starts a one-broker mock cluster with the given topics.
    pub fn start(topics: &[(&str, i32)]) -> MockBroker {
        let mut command = Command::new(super::binary("tandem-mock-broker"));
        for (name, partitions) in topics {
            command.args(["--topic", &format!("{name}:{partitions}")]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tandem-mock-broker starts");
        let control = child.stdin.take().expect("stdin is piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("the mock broker prints its address");
        let bootstrap = line
            .trim()
            .strip_prefix("BOOTSTRAP ")
            .unwrap_or_else(|| panic!("unexpected first line from the mock broker: {line:?}"))
            .to_owned();
        // Keep reading answers so the broker never blocks on a full pipe.
        std::thread::spawn(move || for _ in stdout.lines() {});
        MockBroker {
            child,
            control,
            bootstrap,
        }
    }

    /// Sends a control command (`down 1`, `up 1`, `rtt 1 500`).
    pub fn control(&mut self, command: &str) {
        writeln!(self.control, "{command}").expect("the mock broker reads commands");
    }
}

impl Broker for MockBroker {
    fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for MockBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tansu broker on a fresh SQLite database in a fresh directory.
pub struct Tansu {
    child: Child,
    bootstrap: String,
}

/// Where `make test` installs tansu (scripts/setup.sh), unless TANDEM_TANSU points elsewhere.
pub fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TANDEM_TANSU") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/tandem/tansu-0.6.0/bin/tansu")
}

impl Tansu {
    /// Starts tansu in `directory` and creates the topics.
    pub fn start(directory: &Path, topics: &[(&str, i32)]) -> Tansu {
        let binary = tansu_binary();
        assert!(
            binary.is_file(),
            "tansu is not installed at {}: run `make test` (scripts/setup.sh installs it) or set TANDEM_TANSU",
            binary.display()
        );
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&binary)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            // A path relative to the working directory: tansu joins it to the cwd.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(directory)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        let tansu = Tansu {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
        };
        for (name, partitions) in topics {
            wait_for(
                &format!("tansu to create topic {name}"),
                Duration::from_secs(30),
                || {
                    Command::new(&binary)
                        .args([
                            "topic",
                            "create",
                            name,
                            "--partitions",
                            &partitions.to_string(),
                            "--broker",
                            &url,
                        ])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .ok()
                        .filter(|status| status.success())
                },
            );
        }
        tansu
    }
}

impl Broker for Tansu {
    fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
