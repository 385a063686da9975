//! `tandem-mock-broker`: librdkafka's mock cluster as a process of its own, for tests.
//!
//! Prints `BOOTSTRAP <host:port,...>` on stdout once the topics exist, then obeys control lines
//! on stdin (`down <broker-id>`, `up <broker-id>`, `rtt <broker-id> <millis>`) and exits when
//! stdin closes. Tests kill the daemon without killing the broker this way.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use rdkafka::mocking::MockCluster;

fn main() -> ExitCode {
    let mut brokers = 1;
    let mut topics: Vec<(String, i32)> = Vec::new();
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        match (argument.as_str(), arguments.next()) {
            ("--brokers", Some(count)) => match count.parse() {
                Ok(count) => brokers = count,
                Err(_) => return usage(&format!("--brokers expects a number, got `{count}`")),
            },
            ("--topic", Some(spec)) => {
                let Some((name, partitions)) = spec.rsplit_once(':') else {
                    return usage(&format!("--topic expects name:partitions, got `{spec}`"));
                };
                let Ok(partitions) = partitions.parse() else {
                    return usage(&format!("--topic expects name:partitions, got `{spec}`"));
                };
                topics.push((name.to_owned(), partitions));
            }
            _ => return usage(&format!("unexpected argument `{argument}`")),
        }
    }
    let cluster = match MockCluster::new(brokers) {
        Ok(cluster) => cluster,
        Err(error) => {
            eprintln!("tandem-mock-broker: cannot start the mock cluster: {error}");
            return ExitCode::FAILURE;
        }
    };
    for (name, partitions) in &topics {
        if let Err(error) = cluster.create_topic(name, *partitions, 1) {
            eprintln!("tandem-mock-broker: cannot create topic {name}: {error}");
            return ExitCode::FAILURE;
        }
    }
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "BOOTSTRAP {}", cluster.bootstrap_servers())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let result = match words.as_slice() {
            ["down", id] => id
                .parse()
                .map_err(|_| "bad broker id".to_owned())
                .and_then(|id| cluster.broker_down(id).map_err(|error| error.to_string())),
            ["up", id] => id
                .parse()
                .map_err(|_| "bad broker id".to_owned())
                .and_then(|id| cluster.broker_up(id).map_err(|error| error.to_string())),
            ["rtt", id, millis] => match (id.parse(), millis.parse()) {
                (Ok(id), Ok(millis)) => cluster
                    .broker_round_trip_time(id, Duration::from_millis(millis))
                    .map_err(|error| error.to_string()),
                _ => Err("usage: rtt <broker-id> <millis>".to_owned()),
            },
            [] => Ok(()),
            _ => Err(format!("unknown command `{line}`")),
        };
        let answer = match result {
            Ok(()) => "OK".to_owned(),
            Err(error) => format!("ERR {error}"),
        };
        if writeln!(stdout, "{answer}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    ExitCode::SUCCESS
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("tandem-mock-broker: {problem}\nusage: tandem-mock-broker [--brokers N] [--topic name:partitions]...");
    ExitCode::from(2)
}
