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

/// The checked configuration of an accepted file.
fn accepted(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
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
    let checked = accepted(&check_config(&path, &[]));
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
    let checked = accepted(&check_config(
        &path,
        &[
            ("TANDEM_KAFKA__BROKERS", "kafka-1:9092,kafka-2:9092"),
            ("TANDEM_RECONCILE__GRACE", "90s"),
            ("TANDEM_SYSTEMS__SOURCE__TOPICS", "legacy.a,legacy.b"),
            // Text stays text (a group id with a leading zero); numbers and booleans are
            // read as the key's type asks.
            ("TANDEM_KAFKA__GROUP_ID", "0123"),
            ("TANDEM_STORE__CACHE_MIB", "64"),
            ("TANDEM_RECONCILE__IDLE_CLOCK", "false"),
            // Not configuration: variables without a section separator are ignored.
            ("TANDEM_URL", "http://127.0.0.1:1"),
            ("TANDEM_SERVICE_HOST", "10.0.0.1"),
        ],
    ));
    assert_eq!(
        checked["config"]["kafka"]["brokers"],
        "kafka-1:9092,kafka-2:9092"
    );
    assert_eq!(checked["config"]["reconcile"]["grace"], "1m 30s");
    assert_eq!(checked["config"]["kafka"]["group_id"], "0123");
    assert_eq!(checked["config"]["store"]["cache_mib"], 64);
    assert_eq!(checked["config"]["reconcile"]["idle_clock"], false);
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
    let target = "topics = [\"crm.target.changes\"]\n";
    let not_avro = write(directory.path(), "AbC.avsc", "{\"type\": \"record\"}");
    let schemas = |path: &str| {
        GOOD.replace(
            target,
            &format!("{target}format = \"salesforce-cdc\"\nsalesforce_schemas = [\"{path}\"]\n"),
        )
    };
    let cases: [(&str, String, &[&str]); 26] = [
        ("schemas_absent.toml", schemas("/nonexistent/schemas"), &["key `systems.target.salesforce_schemas`", "cannot read `/nonexistent/schemas`"]),
        ("schemas_bad.toml", schemas(not_avro.to_str().unwrap()), &["key `systems.target.salesforce_schemas`", "AbC.avsc", "not an Avro schema"]),
        ("owned.toml", format!("{GOOD}\n[ownership]\nentities = {{ ticket = \"target\" }}\n"), &["key `ownership.entities.ticket`", "not one of the configured entities"]),
        ("allowed.toml", format!("{GOOD}\n[ownership]\nallowed = {{ target = [\"bot\"] }}\n"), &["key `ownership.allowed.target`", "`bot` is not one of"]),
        ("token.toml", GOOD.replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:8080\"\nadmin_token = \"short\""), &["key `api.admin_token`", "at least 16 characters"]),
        ("token_file.toml", GOOD.replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:8080\"\nread_token_file = \"/nonexistent/read.token\""), &["key `api.read_token_file`", "cannot read /nonexistent/read.token"]),
        ("format.toml", GOOD.replace(target, &format!("{target}format = \"salesforce\"\n")), &["key `systems.target.format`", "`salesforce` is not a format", "salesforce-cdc"]),
        ("topic_format.toml", GOOD.replace(target, &format!("{target}formats = {{ \"crm.target.changes\" = \"debezum\" }}\n")), &["key `systems.target.formats.crm.target.changes`", "`debezum` is not a format"]),
        ("format_topic.toml", GOOD.replace(target, &format!("{target}formats = {{ \"crm.other\" = \"debezium\" }}\n")), &["key `systems.target.formats`", "`crm.other` is not one of `systems.target.topics`"]),
        ("actor.toml", GOOD.replace(target, &format!("{target}actors = {{ \"client:SyncApp\" = \"robot\" }}\n")), &["key `systems.target.actors.client:SyncApp`", "`robot` is not one of sync, repair, user, system, integration"]),
        ("unknown.toml", GOOD.replace("group_id = \"tandem\"", "group_id = \"tandem\"\ngroupid = \"x\""), &["unknown key `kafka.groupid`", "group_id"]),
        ("missing.toml", GOOD.replace("brokers = \"127.0.0.1:9092\"\n", ""), &["required key `kafka.brokers` is missing"]),
        ("missing_topics.toml", GOOD.replace("topics = [\"crm.target.changes\"]\n", ""), &["required key `systems.target.topics` is missing"]),
        ("duration.toml", GOOD.replace("grace = \"5m\"", "grace = \"5 parsecs\""), &["key `reconcile.grace`", "duration"]),
        ("twice.toml", format!("{GOOD}\n[[entities]]\nname = \"contact\"\njoin = {{ source = \"id\", target = \"id\" }}\n"), &["key `entities`", "`contact` is mapped twice"]),
        ("join.toml", GOOD.replace("field:legacy_id", "legacy_id"), &["entities[0].join.target", "field:<name>"]),
        ("shared_topic.toml", GOOD.replace("crm.target.changes", "crm.source.changes"), &["systems.target.topics", "listed twice"]),
        ("property.toml", GOOD.replace("\"session.timeout.ms\" = 10000", "\"no.such.property\" = \"1\""), &["kafka.properties", "no.such.property"]),
        ("not_toml.toml", "kafka = [".to_owned(), &["TOML syntax error at line 1"]),
        ("brokers.toml", GOOD.replace("brokers = \"127.0.0.1:9092\"", "brokers = \"not a host\""), &["key `kafka.brokers`", "`not a host` is not a host"]),
        ("port.toml", GOOD.replace("brokers = \"127.0.0.1:9092\"", "brokers = \"k1:9092,k2:99999\""), &["key `kafka.brokers`", "`k2:99999`", "between 1 and 65535"]),
        ("no_host.toml", GOOD.replace("brokers = \"127.0.0.1:9092\"", "brokers = \"SASL_SSL://:9092\""), &["key `kafka.brokers`", "names no host"]),
        ("named_reserved.toml", GOOD.replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:8080\"\n[[api.tokens]]\nname = \"admin\"\nrole = \"admin\"\ntoken = \"0123456789abcdef-ann\""), &["key `api.tokens[0].name`", "shared token"]),
        ("named_twice.toml", GOOD.replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:8080\"\n[[api.tokens]]\nname = \"ann\"\nrole = \"admin\"\ntoken = \"0123456789abcdef-ann\"\n[[api.tokens]]\nname = \"ann\"\nrole = \"read\"\ntoken = \"0123456789abcdef-ann2\""), &["key `api.tokens[1].name`", "given twice"]),
        ("named_same.toml", GOOD.replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:8080\"\nadmin_token = \"0123456789abcdef-ann\"\n[[api.tokens]]\nname = \"ann\"\nrole = \"admin\"\ntoken = \"0123456789abcdef-ann\""), &["key `api.tokens[0]`", "configured twice"]),
        ("grace_number.toml", GOOD.replace("grace = \"5m\"", "grace = 5"), &["key `reconcile.grace`", "5 has no unit", "\"5m\""]),
    ];
    for (name, text, fragments) in cases {
        let path = write(directory.path(), name, &text);
        assert_refused(&check_config(&path, &[]), &path, fragments);
    }
    let absent = directory.path().join("absent.toml");
    assert_refused(&check_config(&absent, &[]), &absent, &["does not exist"]);
}

#[test]
fn secrets_stay_out_of_configuration_errors() {
    let directory = tempfile::tempdir().unwrap();
    let secret = "hunter2-very-secret-0123456789";
    // A token whose closing quote is missing: the error names the place, not the line.
    let unclosed = write(
        directory.path(),
        "unclosed.toml",
        &GOOD.replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"127.0.0.1:8080\"\nadmin_token = \"{secret}\n"),
        ),
    );
    let line = GOOD
        .lines()
        .position(|line| line.starts_with("listen"))
        .unwrap()
        + 2;
    let refused = check_config(&unclosed, &[]);
    assert_refused(
        &refused,
        &unclosed,
        &[&format!("TOML syntax error at line {line}")],
    );
    // A misspelled password property: named, its value not shown.
    let misspelled = write(
        directory.path(),
        "misspelled.toml",
        &GOOD.replace(
            "\"session.timeout.ms\" = 10000",
            &format!("\"sasl.pasword\" = \"{secret}\""),
        ),
    );
    let refused_property = check_config(&misspelled, &[]);
    assert_refused(
        &refused_property,
        &misspelled,
        &["key `kafka.properties`", "`sasl.pasword`"],
    );
    for output in [&refused, &refused_property] {
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!said.contains(secret), "{said}");
    }
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
    let checked = accepted(&check_config(&example, &[]));
    let entities: Vec<&str> = checked["config"]["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entity| entity["name"].as_str().unwrap())
        .collect();
    assert_eq!(entities, ["contact", "company", "deal"]);
}

/// The shipped Kubernetes configuration listens on every interface, so it must ask for
/// tokens; with its Secret mounted (here: files with the same keys) it is valid.
#[test]
fn the_kubernetes_configuration_is_valid_and_asks_for_tokens() {
    use std::os::unix::fs::PermissionsExt;
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/kubernetes/configmap.yaml"),
    )
    .unwrap();
    // The block under `tandem.toml: |`, four spaces in.
    let toml: String = manifest
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("tandem.toml: |"))
        .skip(1)
        .map(|line| {
            format!(
                "{}\n",
                line.strip_prefix("    ").unwrap_or(line.trim_start())
            )
        })
        .collect();
    assert!(toml.contains("listen = \"0.0.0.0:8080\""), "{toml}");
    let directory = tempfile::tempdir().unwrap();
    let mut text = toml.replace(
        "/var/lib/tandem/store",
        &directory.path().join("store").display().to_string(),
    );
    for key in ["admin", "read"] {
        let file = write(
            directory.path(),
            key,
            &format!("{key}-token-0123456789abcdef\n"),
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o440)).unwrap();
        text = text.replace(
            &format!("/etc/tandem-tokens/{key}"),
            &file.display().to_string(),
        );
    }
    assert!(
        !text.contains("/etc/tandem-tokens"),
        "every token file is replaced: {text}"
    );
    let path = write(directory.path(), "tandem.toml", &text);
    let checked = accepted(&check_config(&path, &[]));
    // Mounted readable by the pod's group only: nothing to warn about.
    assert_eq!(checked["warnings"], serde_json::json!([]));
    let api = &checked["config"]["api"];
    assert!(
        api["read_token_file"].is_string() && api["admin_token_file"].is_string(),
        "{api}"
    );
}

/// A Pub/Sub change event whose field bitmaps only the event's schema decodes: `tandem decode`
/// with a configured topic loads the topic's `salesforce_schemas`, as the daemon does.
#[test]
fn decode_reads_field_bitmaps_with_the_configured_schemas() {
    let directory = tempfile::tempdir().unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas/examples/formats/salesforce-cdc");
    let config = write(
        directory.path(),
        "tandem.toml",
        &GOOD.replace(
            "topics = [\"crm.target.changes\"]\n",
            &format!(
                "topics = [\"crm.target.changes\"]\nformat = \"salesforce-cdc\"\nsalesforce_schemas = [\"{}\"]\n",
                examples.join("schemas").display()
            ),
        ),
    );
    let event = std::fs::read(examples.join("pubsub-bitmap-update-enriched.json")).unwrap();
    let fields = |args: &[&str]| {
        let output = decode(args, &event);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line = String::from_utf8(output.stdout).unwrap();
        let event = tandem_core::event::decode(Some(line.trim().as_bytes()), 1 << 20).unwrap();
        let mut names: Vec<String> = event.fields.unwrap().into_keys().collect();
        names.sort();
        names
    };
    // Salesforce's example: only Fax and LastModifiedDate changed (bits 7 and 22).
    assert_eq!(
        fields(&[
            "--config",
            config.to_str().unwrap(),
            "--topic",
            "crm.target.changes"
        ]),
        ["Fax", "LastModifiedDate"]
    );
    // Without the schema, every value the event proves (the enriched ones too).
    assert_eq!(
        fields(&["--format", "salesforce-cdc"]),
        [
            "BillingCity",
            "BillingCountry",
            "BillingPostalCode",
            "BillingState",
            "BillingStreet",
            "External_Account_ID__c",
            "Fax",
            "Industry",
            "LastModifiedDate"
        ]
    );
}

/// The vendor example of a format, decoded by `tandem decode`.
fn decode(args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(common::tandem_binary())
        .arg("decode")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tandem runs");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn decode_prints_the_canonical_events_of_a_vendor_payload() {
    // A Debezium update of row 1004 of `customers`, schema wrapper off; the key names the row.
    let directory = tempfile::tempdir().unwrap();
    let key = write(directory.path(), "key.json", r#"{"id": 1004}"#);
    let value = br#"{"before": {"id": 1004, "email": "anne@noanswer.org"},
        "after": {"id": 1004, "first_name": "Anne", "email": "anne@example.com"},
        "source": {"version": "2.5.0.Final", "connector": "postgresql", "name": "crm",
                   "ts_ms": 1763892000000, "db": "crm", "schema": "public", "table": "customers",
                   "txId": 771, "lsn": 33560408, "snapshot": "false"},
        "op": "u", "ts_ms": 1763892000123}"#;
    let output = decode(
        &["--format", "debezium", "--key", key.to_str().unwrap()],
        value,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events: Vec<tandem_core::ChangeEvent> = stdout
        .lines()
        .map(|line| tandem_core::event::decode(Some(line.as_bytes()), 1 << 20).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "{stdout}");
    let event = &events[0];
    assert_eq!(
        (
            event.entity.as_str(),
            event.id.as_str(),
            event.op,
            event.partial
        ),
        ("customers", "1004", tandem_core::Op::Update, false)
    );
    assert_eq!(event.occurred_at.to_rfc3339(), "2025-11-23T10:00:00Z");
    assert_eq!(
        event.fields.as_ref().unwrap()["email"],
        serde_json::json!("anne@example.com")
    );

    // The same value from a configured topic: the table is mapped to the entity `contact`.
    let config = write(
        directory.path(),
        "tandem.toml",
        &GOOD.replace(
            "topics = [\"crm.target.changes\"]\n",
            "topics = [\"crm.target.changes\"]\nformat = \"debezium\"\nobjects = { customers = \"contact\" }\n",
        ),
    );
    let output = decode(
        &[
            "--config",
            config.to_str().unwrap(),
            "--topic",
            "crm.target.changes",
            "--key",
            key.to_str().unwrap(),
        ],
        value,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let event: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(event["entity"], "contact");

    // A payload the format does not understand: exit 1, the dead-letter reason and the part.
    let output = decode(
        &["--format", "debezium", "--key", key.to_str().unwrap()],
        br#"{"op": "x"}"#,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("schema_violation") && stderr.contains("not a debezium message"),
        "{stderr}"
    );

    // An unknown format is a usage error.
    let output = decode(&["--format", "salesforce"], b"{}");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("salesforce-cdc"));
}

#[test]
fn secrets_and_a_store_others_can_read_are_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let directory = tempfile::tempdir().unwrap();
    let token = write(
        directory.path(),
        "admin-token",
        "admin-token-0123456789abcdef\n",
    );
    let store = directory.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let text = GOOD
        .replace(
            "listen = \"127.0.0.1:8080\"",
            &format!(
                "listen = \"127.0.0.1:8080\"\nadmin_token_file = \"{}\"",
                token.display()
            ),
        )
        .replace("./tandem-data", &store.display().to_string());
    let path = write(directory.path(), "tandem.toml", &text);
    let warnings = |output: &Output| -> Vec<String> {
        serde_json::from_value(accepted(output)["warnings"].clone()).unwrap()
    };
    for (file, mode) in [(&token, 0o644), (&store, 0o755)] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let loose = warnings(&check_config(&path, &[]));
    assert_eq!(loose.len(), 2, "{loose:?}");
    assert!(
        loose[0].contains("api.admin_token_file")
            && loose[0].contains("mode 644")
            && loose[0].contains(&format!("chmod 600 {}", token.display())),
        "{loose:?}"
    );
    assert!(
        loose[1].contains("store.path")
            && loose[1].contains(&format!("chmod 700 {}", store.display())),
        "{loose:?}"
    );
    // The secret itself is never in them.
    assert!(!loose.concat().contains("admin-token-0123"), "{loose:?}");
    // The text format says them on stderr.
    let text_output = Command::new(common::tandem_binary())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&text_output.stderr);
    assert_eq!(stderr.matches("warning: key `").count(), 2, "{stderr}");
    for (file, mode) in [(&token, 0o600), (&store, 0o700)] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    assert_eq!(warnings(&check_config(&path, &[])), Vec::<String>::new());
}
