//! tandem against Apache Kafka as production runs it: SASL/SCRAM-SHA-512 over TLS
//! (certificates made here with openssl), ACLs enforced. The password comes from a file or an
//! environment variable and is never printed; a topic tandem may not read, or that does not
//! exist, is named in `/readyz` and the report with what to grant or create, and ingestion
//! of it starts once that is done.

use tandem_testkit as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::kafka::{write_private, Security, Tls};
use common::{
    contact_status, free_port, minute, source_contact, target_contact, wait_for, Broker,
    ContactConfig, Daemon, Kafka, KafkaOptions, Topics,
};

const DEADLINE: Duration = Duration::from_secs(120);
const TANDEM_PASSWORD: &str = "tandem-scram-password-7f3a9c";

fn openssl(directory: &Path, arguments: &[&str]) {
    let output = Command::new("openssl")
        .args(arguments)
        .current_dir(directory)
        .output()
        .expect("openssl runs (scripts/setup.sh installs it)");
    assert!(
        output.status.success(),
        "openssl {arguments:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, and a broker certificate it signed for 127.0.0.1: (broker key and chain, CA).
fn make_certificates(directory: &Path) -> (PathBuf, PathBuf) {
    openssl(
        directory,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=tandem test CA",
        ],
    );
    openssl(
        directory,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "broker.key",
            "-out",
            "broker.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        directory.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        directory,
        &[
            "x509",
            "-req",
            "-in",
            "broker.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "broker.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    let keystore = format!(
        "{}{}",
        std::fs::read_to_string(directory.join("broker.key")).unwrap(),
        std::fs::read_to_string(directory.join("broker.pem")).unwrap()
    );
    let keystore_path = directory.join("broker-keystore.pem");
    write_private(&keystore_path, &keystore);
    (keystore_path, directory.join("ca.pem"))
}

/// Grants `operations` on a topic (or a group) to tandem's principal.
fn grant(kafka: &Kafka, resource: (&str, &str), operations: &[&str]) {
    let mut arguments = vec![
        "--add",
        "--allow-principal",
        "User:tandem",
        resource.0,
        resource.1,
    ];
    for operation in operations {
        arguments.extend(["--operation", operation]);
    }
    kafka.tool("org.apache.kafka.tools.AclCommand", &arguments);
}

fn kafka_lines(group: &str, ca: &Path, password: &str) -> String {
    format!(
        r#"group_id = "{group}"
[kafka.properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanism" = "SCRAM-SHA-512"
"sasl.username" = "tandem"
"ssl.ca.location" = "{ca}"
[kafka.secret_properties]
{password}"#,
        ca = ca.display()
    )
}

fn produce(kafka: &Kafka, topic: &str, events: &[serde_json::Value]) {
    common::produce_messages(
        &kafka.client_config(),
        topic,
        &common::json_messages(events),
    );
}

fn readiness_reasons(daemon: &Daemon) -> String {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    agent
        .get(&format!("{}/readyz", daemon.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

#[test]
fn scram_over_tls_with_acls_a_secret_never_printed_and_refused_topics_named() {
    let tls_directory = tempfile::tempdir().unwrap();
    let (broker_keystore_pem, ca_pem) = make_certificates(tls_directory.path());
    let kafka = Kafka::start_with(KafkaOptions {
        security: Security::ScramOverTls(Tls {
            broker_keystore_pem,
            ca_pem: ca_pem.clone(),
            users: vec![
                ("admin".to_owned(), "admin-scram-password-1d8e".to_owned()),
                ("tandem".to_owned(), TANDEM_PASSWORD.to_owned()),
            ],
        }),
        properties: Vec::new(),
    });
    let topics = Topics::unique("secure");
    let missing = "secure.crm.more-changes";
    kafka.create_topics(&[
        (&topics.source, 1),
        (&topics.target, 1),
        (&topics.dead_letters, 1),
    ]);
    // tandem may read the source and its group, write dead letters, and see the missing
    // topic's name; the target is not granted yet.
    grant(&kafka, ("--topic", &topics.source), &["Read", "Describe"]);
    grant(&kafka, ("--topic", missing), &["Read", "Describe"]);
    grant(
        &kafka,
        ("--topic", &topics.dead_letters),
        &["Write", "Describe"],
    );
    grant(&kafka, ("--group", "tandem"), &["Read"]);
    produce(
        &kafka,
        &topics.source,
        &[source_contact("s1", 1, "create", &minute(0), "c1@x.io")],
    );
    produce(
        &kafka,
        &topics.target,
        &[target_contact("t1", 1, "create", &minute(1), "c1@x.io")],
    );

    let directory = tempfile::tempdir().unwrap();
    let password_file = directory.path().join("kafka-password");
    write_private(&password_file, &format!("{TANDEM_PASSWORD}\n"));
    let port = free_port();
    let mut config = ContactConfig::new(kafka.bootstrap(), &topics, port);
    config.kafka_lines = kafka_lines(
        "tandem",
        &ca_pem,
        &format!(
            "\"sasl.password\" = {{ file = \"{}\" }}",
            password_file.display()
        ),
    );
    let config_path = config.write(directory.path());
    // The missing topic is a second source topic.
    let text = std::fs::read_to_string(&config_path).unwrap().replace(
        &format!("topics = [\"{}\"]", topics.source),
        &format!("topics = [\"{}\", \"{missing}\"]", topics.source),
    );
    std::fs::write(&config_path, text).unwrap();
    let log = directory.path().join("tandem.log");
    let daemon = Daemon::start(&config_path, port, &log);

    // What is refused is named, with what to do; what is allowed is read.
    let report = wait_for("both topic problems in the report", DEADLINE, || {
        let report = daemon.report();
        (report.ingest.kafka_problems.len() == 2 && report.ingest.source.events_applied == 1)
            .then_some(report)
    });
    let denied = &report.ingest.kafka_problems[&format!("topic {}", topics.target)];
    assert!(
        denied.contains("may not be read") && denied.contains("grant"),
        "{denied}"
    );
    let absent = &report.ingest.kafka_problems[&format!("topic {missing}")];
    assert!(
        absent.contains("does not exist") && absent.contains("create it"),
        "{absent}"
    );
    assert_eq!(daemon.readiness(), 503);
    let reasons = readiness_reasons(&daemon);
    assert!(
        reasons.contains(&topics.target) && reasons.contains(missing),
        "{reasons}"
    );

    // Granted and created: the problems clear, and the target's copy arrives.
    grant(&kafka, ("--topic", &topics.target), &["Read", "Describe"]);
    kafka.create_topics(&[(missing, 1)]);
    wait_for("the problems to clear", DEADLINE, || {
        daemon
            .report()
            .ingest
            .kafka_problems
            .is_empty()
            .then_some(())
    });
    daemon.wait_for_applied(2, DEADLINE);
    assert_eq!(
        contact_status(&daemon, 1),
        Some(tandem_core::Status::InSync)
    );
    wait_for("readiness", DEADLINE, || {
        (daemon.readiness() == 200).then_some(())
    });

    // The password shows nowhere: not in the log, not in check-config.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        !logged.contains(TANDEM_PASSWORD),
        "the log holds the password"
    );
    let check = Command::new(common::tandem_binary())
        .args(["check-config", "--format", "json"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let printed = String::from_utf8_lossy(&check.stdout);
    assert!(!printed.contains(TANDEM_PASSWORD), "{printed}");
    assert!(
        printed.contains(&password_file.display().to_string()),
        "the source is shown"
    );
    drop(daemon);

    // From an environment variable instead (another store, so another group: the first
    // store's member keeps its partitions until its session expires), and an inline password
    // is redacted when shown.
    grant(&kafka, ("--group", "tandem-env"), &["Read"]);
    let env_directory = tempfile::tempdir().unwrap();
    let env_port = free_port();
    let mut env_config = ContactConfig::new(kafka.bootstrap(), &topics, env_port);
    env_config.kafka_lines = kafka_lines(
        "tandem-env",
        &ca_pem,
        "\"sasl.password\" = { env = \"KAFKA_PASSWORD\" }",
    );
    let env_config_path = env_config.write(env_directory.path());
    let unset = Command::new(common::tandem_binary())
        .args(["check-config"])
        .arg(&env_config_path)
        .env_remove("KAFKA_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(unset.status.code(), Some(2));
    let refusal = String::from_utf8_lossy(&unset.stderr);
    assert!(
        refusal.contains("kafka.secret_properties")
            && refusal.contains("KAFKA_PASSWORD is not set"),
        "{refusal}"
    );
    let from_env = Daemon::start_with_env(
        &env_config_path,
        env_port,
        &env_directory.path().join("tandem.log"),
        &[("KAFKA_PASSWORD", TANDEM_PASSWORD)],
    );
    from_env.wait_for_applied(2, DEADLINE);
    drop(from_env);
    let inline_directory = tempfile::tempdir().unwrap();
    let mut inline = ContactConfig::new(kafka.bootstrap(), &topics, free_port());
    inline.kafka_lines = kafka_lines("tandem", &ca_pem, "").replace(
        "[kafka.secret_properties]",
        &format!("\"sasl.password\" = \"{TANDEM_PASSWORD}\""),
    );
    let inline_path = inline.write(inline_directory.path());
    let shown = Command::new(common::tandem_binary())
        .args(["check-config", "--format", "json"])
        .arg(&inline_path)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        !shown.contains(TANDEM_PASSWORD) && shown.contains("<redacted>"),
        "{shown}"
    );
}
