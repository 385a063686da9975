//! librdkafka's mock cluster as a process of its own, for the faults only it can inject
//! (request errors, round-trip times); the tests' broker is Apache Kafka ([`crate::kafka`]).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};

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
