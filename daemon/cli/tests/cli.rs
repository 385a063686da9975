//! The `tandem` binary's configuration handling: every bad file is refused with exit code 2
//! and a message naming the file and the key; environment variables override the file.

use tandem_testkit as common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const GOOD: &str = r#"[kafka]
brokers = "127.0.0.1:9092"
group_id = "tandem"
dead_letter_topic = "tandem.dlq"
[kafka.properties]
"session.timeout.ms" = 10000

[store]
path = "./tandem-data"

[api]
listen = "127.0.0.1:8080"

[systems.source]
label = "Legacy CRM"
topics = ["crm.source.changes"]

[systems.target]
label = "New CRM"
topics = ["crm.target.changes"]

[reconcile]
grace = "5m"

[[entities]]
name = "contact"
join = { source = "external_id", target = "field:legacy_id" }
fields = [
  { source = "Email", target = "email" },
  { source = "LastName", target = "lastname" },
]
"#;

fn write(directory: &Path, name: &str, text: &str) -> PathBuf {
    let path = directory.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn check_config(path: &Path, environment: &[(&str, &str)]) -> Output {
    let mut command = Command::new(common::tandem_binary());
    command.args(["check-config", "--format", "json"]).arg(path);
    for (name, value) in environment {
        command.env(name, value);
    }
    command.output().expect("tandem runs")
}

/// Asserts a refusal with exit code 2 whose message names the file and every fragment.
fn assert_refused(output: &Output, file: &Path, fragments: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "expected exit code 2, stderr: {stderr}"
    );
    assert!(
        stderr.contains(&file.display().to_string()),
        "the message names the file: {stderr}"
    );
    for fragment in fragments {
        assert!(
            stderr.contains(fragment),
            "the message contains {fragment:?}: {stderr}"
        );
    }
}

#[test]
fn a_good_file_is_accepted_as_written() {
    let directory = tempfile::tempdir().unwrap();
    let path = write(directory.path(), "tandem.toml", GOOD);
    let output = check_config(&path, &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let checked: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(checked["valid"], true);
    assert_eq!(checked["config"]["kafka"]["brokers"], "127.0.0.1:9092");
    assert_eq!(
        checked["config"]["kafka"]["properties"]["session.timeout.ms"],
        "10000"
    );
    assert_eq!(checked["config"]["reconcile"]["grace"], "5m");
    assert_eq!(
        checked["config"]["entities"][0]["join"]["target"],
        "field:legacy_id"
    );
    // Defaults for what the file leaves out.
    assert_eq!(checked["config"]["kafka"]["max_message_bytes"], 1_048_576);
    assert_eq!(checked["config"]["reconcile"]["idle_clock"], true);
}

#[test]
fn environment_variables_override_the_file() {
    let directory = tempfile::tempdir().unwrap();
    let path = write(directory.path(), "tandem.toml", GOOD);
    let output = check_config(
        &path,
        &[
            ("TANDEM_KAFKA__BROKERS", "kafka-1:9092,kafka-2:9092"),
            ("TANDEM_RECONCILE__GRACE", "90s"),
            ("TANDEM_SYSTEMS__SOURCE__TOPICS", "legacy.a,legacy.b"),
            // Not configuration: variables without a section separator are ignored.
            ("TANDEM_URL", "http://127.0.0.1:1"),
            ("TANDEM_SERVICE_HOST", "10.0.0.1"),
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let checked: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        checked["config"]["kafka"]["brokers"],
        "kafka-1:9092,kafka-2:9092"
    );
    assert_eq!(checked["config"]["reconcile"]["grace"], "1m 30s");
    assert_eq!(
        checked["config"]["systems"]["source"]["topics"],
        serde_json::json!(["legacy.a", "legacy.b"])
    );

    let refused = check_config(&path, &[("TANDEM_RECONCILE__GRACE", "soon")]);
    assert_refused(
        &refused,
        &path,
        &["reconcile.grace", "TANDEM_RECONCILE__GRACE"],
    );
}

#[test]
fn bad_files_name_the_key_and_exit_2() {
    let directory = tempfile::tempdir().unwrap();
    let cases: [(&str, String, &[&str]); 9] = [
        ("unknown.toml", GOOD.replace("group_id = \"tandem\"", "group_id = \"tandem\"\ngroupid = \"x\""), &["unknown key `kafka.groupid`", "group_id"]),
        ("missing.toml", GOOD.replace("brokers = \"127.0.0.1:9092\"\n", ""), &["required key `kafka.brokers` is missing"]),
        ("missing_topics.toml", GOOD.replace("topics = [\"crm.target.changes\"]\n", ""), &["required key `systems.target.topics` is missing"]),
        ("duration.toml", GOOD.replace("grace = \"5m\"", "grace = \"5 parsecs\""), &["key `reconcile.grace`", "duration"]),
        ("twice.toml", format!("{GOOD}\n[[entities]]\nname = \"contact\"\njoin = {{ source = \"id\", target = \"id\" }}\n"), &["key `entities`", "`contact` is mapped twice"]),
        ("join.toml", GOOD.replace("field:legacy_id", "legacy_id"), &["entities[0].join.target", "field:<name>"]),
        ("shared_topic.toml", GOOD.replace("crm.target.changes", "crm.source.changes"), &["systems.target.topics", "listed twice"]),
        ("property.toml", GOOD.replace("\"session.timeout.ms\" = 10000", "\"no.such.property\" = \"1\""), &["kafka.properties", "no.such.property"]),
        ("not_toml.toml", "kafka = [".to_owned(), &["TOML parse error"]),
    ];
    for (name, text, fragments) in cases {
        let path = write(directory.path(), name, &text);
        assert_refused(&check_config(&path, &[]), &path, fragments);
    }
    let absent = directory.path().join("absent.toml");
    assert_refused(&check_config(&absent, &[]), &absent, &["does not exist"]);
}

#[test]
fn run_refuses_a_bad_file_before_starting() {
    let directory = tempfile::tempdir().unwrap();
    let path = write(
        directory.path(),
        "tandem.toml",
        &GOOD.replace("[store]\npath", "[store]\npaht"),
    );
    let output = Command::new(common::tandem_binary())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_refused(&output, &path, &["store.paht"]);
}

#[test]
fn the_cli_says_when_no_daemon_answers() {
    let port = common::free_port();
    let output = Command::new(common::tandem_binary())
        .args(["report", "--url", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach tandem") && stderr.contains("tandem run"),
        "{stderr}"
    );
}

#[test]
fn the_documented_example_configuration_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/tandem.example.toml");
    let output = check_config(&example, &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let checked: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let entities: Vec<&str> = checked["config"]["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entity| entity["name"].as_str().unwrap())
        .collect();
    assert_eq!(entities, ["contact", "company", "deal"]);
}
