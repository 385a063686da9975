//! PostgreSQL for tests: Debian's PostgreSQL 15 on a fresh data directory and a free loopback
//! port, with logical decoding on (what Debezium's `pgoutput` connector reads). Trust
//! authentication on loopback: the tests' databases hold nothing secret.
//!
//! PostgreSQL refuses to run as root, so as root it runs as the `postgres` user of Debian's
//! package. Like the broker, it is [`Supervised`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::free_port;
use crate::supervised::Supervised;

/// Where Debian's PostgreSQL 15 server binaries are, unless `TANDEM_PG_BIN` points elsewhere.
fn bin_dir() -> PathBuf {
    std::env::var_os("TANDEM_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// Whether this process is root (PostgreSQL then runs as `postgres`).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program` run as the user PostgreSQL may run as.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// A running PostgreSQL server.
pub struct Postgres {
    process: Option<Supervised>,
    port: u16,
    directory: tempfile::TempDir,
}

impl Postgres {
    /// Initialises a cluster in a fresh directory and starts it.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        assert!(
            bin.join("postgres").is_file(),
            "PostgreSQL 15 is not installed in {}: run `make test` (scripts/setup.sh installs Debian's postgresql-15) or set TANDEM_PG_BIN",
            bin.display()
        );
        let directory = tempfile::Builder::new()
            .prefix("tandem-postgres-")
            .tempdir()
            .expect("a temporary directory for PostgreSQL");
        if is_root() {
            let owned = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(directory.path())
                .status()
                .expect("chown runs");
            assert!(
                owned.success(),
                "cannot give the data directory to postgres"
            );
        }
        let data = directory.path().join("data");
        let output = as_server_user(&bin.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("initdb runs");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let port = free_port();
        let mut postgres = Postgres {
            process: None,
            port,
            directory,
        };
        postgres.launch();
        postgres
    }

    fn launch(&mut self) {
        let bin = bin_dir();
        let directory = self.directory.path();
        let mut arguments: Vec<std::ffi::OsString> =
            vec!["-D".into(), directory.join("data").into()];
        arguments.extend(["-p".into(), self.port.to_string().into(), "-k".into()]);
        arguments.push(directory.into());
        for setting in [
            "listen_addresses=127.0.0.1",
            "wal_level=logical",
            "max_replication_slots=20",
            "max_wal_senders=20",
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
        ] {
            arguments.extend(["-c".into(), setting.into()]);
        }
        // A fast shutdown (SIGINT) when the test process lets go.
        let runner = is_root().then(|| {
            let mut runner = Command::new("runuser");
            runner.args(["-u", "postgres", "--"]);
            runner
        });
        self.process = Some(Supervised::spawn(
            runner,
            bin.join("postgres").as_os_str(),
            arguments,
            "INT",
            &directory.join("postgres.log"),
        ));
        let started = Instant::now();
        loop {
            if postgres::Client::connect(&self.url("postgres"), postgres::NoTls).is_ok() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "PostgreSQL did not accept connections within 60 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A libpq connection string to `database` as the superuser `postgres`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={database}",
            self.port
        )
    }

    /// A client of `database`.
    pub fn client(&self, database: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(database), postgres::NoTls)
            .unwrap_or_else(|error| panic!("connecting to {database}: {error}"))
    }

    /// Creates a database.
    pub fn create_database(&self, name: &str) {
        self.client("postgres")
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|error| panic!("creating database {name}: {error}"));
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.directory.path().join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}
