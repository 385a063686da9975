//! Every example in schemas/ against the JSON Schema and the decoder: the documented format
//! and the implemented one must agree, example by example.

use std::path::{Path, PathBuf};

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn examples(kind: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let directory = schemas_dir().join("examples").join(kind);
    let mut files: Vec<_> = std::fs::read_dir(&directory)
        .unwrap_or_else(|error| panic!("{}: {error}", directory.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "json")
        })
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 8,
        "too few {kind} examples in {}",
        directory.display()
    );
    files
}

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value = serde_json::from_slice(
        &std::fs::read(schemas_dir().join("change-event.v1.schema.json")).unwrap(),
    )
    .unwrap();
    jsonschema::validator_for(&schema).expect("the change-event schema is a valid JSON Schema")
}

#[test]
fn valid_examples_pass_the_schema_and_the_decoder() {
    let validator = validator();
    for (path, bytes) in examples("valid") {
        let instance: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|error| error.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{} fails the schema: {errors:?}",
            path.display()
        );
        if let Err(error) = tandem_core::event::decode(Some(&bytes), 1 << 20) {
            panic!("{} is refused by the decoder: {error}", path.display());
        }
    }
}

#[test]
fn invalid_examples_fail_the_schema_and_the_decoder() {
    let validator = validator();
    for (path, bytes) in examples("invalid") {
        let instance: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(
            !validator.is_valid(&instance),
            "{} passes the schema",
            path.display()
        );
        let refused = tandem_core::event::decode(Some(&bytes), 1 << 20);
        assert!(
            refused.is_err(),
            "{} is accepted by the decoder",
            path.display()
        );
    }
}

#[test]
fn the_openapi_document_lists_every_route() {
    let openapi = std::fs::read_to_string(schemas_dir().join("openapi.yaml")).unwrap();
    for route in [
        "/v1/report:",
        "/v1/divergences:",
        "/v1/records/{entity}/{join_key}:",
        "/healthz:",
        "/readyz:",
        "/metrics:",
        "/v1/ownership:",
        "/v1/ownership/permit:",
        "/v1/violations:",
        "/v1/writers:",
        "/v1/cutover:",
        "/v1/cutover/readiness:",
        "/v1/cutover/{step}:",
        "/v1/delta:",
        "/v1/reevaluate:",
        "/v1/report/history:",
        "/v1/spotcheck:",
        "/v1/backups:",
    ] {
        assert!(
            openapi.contains(route),
            "openapi.yaml does not document {route}"
        );
    }
}

/// The OpenAPI document is valid OpenAPI 3.1, as the reference validator reads it
/// (`openapi-spec-validator`, installed by `scripts/setup.sh`).
#[test]
fn the_openapi_document_is_valid_openapi() {
    let validator = tandem_testkit::installed_tool("python/bin/openapi-spec-validator");
    let output = std::process::Command::new(&validator)
        .arg(schemas_dir().join("openapi.yaml"))
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "{}: {error}; run scripts/setup.sh test (make test does)",
                validator.display()
            )
        });
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && said.trim_end().ends_with(": OK"),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The shipped alert rules pass `promtool check rules`.
#[test]
fn the_alert_rules_pass_promtool() {
    let output = std::process::Command::new(tandem_testkit::installed_tool("tools/bin/promtool"))
        .args(["check", "rules"])
        .arg(schemas_dir().join("../ops/prometheus/alerts.yaml"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn request_examples_match_their_schemas() {
    let directory = schemas_dir().join("examples").join("requests");
    let mut checked = 0;
    for entry in std::fs::read_dir(&directory).unwrap() {
        let path = entry.unwrap().path();
        let instance: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let schema_file = match instance["type"].as_str() {
            Some("reread") => "reread-request.schema.json",
            Some("snapshot") => "snapshot-request.schema.json",
            other => panic!("{}: unknown request type {other:?}", path.display()),
        };
        let schema: serde_json::Value =
            serde_json::from_slice(&std::fs::read(schemas_dir().join(schema_file)).unwrap())
                .unwrap();
        let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|error| error.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{} fails {schema_file}: {errors:?}",
            path.display()
        );
        checked += 1;
    }
    assert!(
        checked >= 2,
        "too few request examples in {}",
        directory.display()
    );
}

/// Every vendor example decodes, and every canonical event it becomes passes the canonical
/// JSON Schema: the decoders produce only what the contract documents.
#[test]
fn vendor_examples_decode_to_events_that_pass_the_schema() {
    use tandem_formats::{decode_message, Format, FormatSettings};
    let validator = validator();
    for format in Format::ALL.into_iter().skip(1) {
        let directory = schemas_dir().join("examples/formats").join(format.name());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&directory)
            .unwrap_or_else(|error| panic!("{}: {error}", directory.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                path.extension()
                    .is_some_and(|extension| extension == "json")
                    && !path.to_string_lossy().ends_with(".key.json")
            })
            .collect();
        files.sort();
        assert!(
            files.len() >= 4,
            "too few {format} examples in {}",
            directory.display()
        );
        let settings = FormatSettings::new(format);
        let mut events = 0;
        for path in files {
            let value = std::fs::read(&path).unwrap();
            let key = std::fs::read(path.with_extension("key.json")).ok();
            let decoded = decode_message(&settings, key.as_deref(), Some(&value), 1 << 20)
                .unwrap_or_else(|error| panic!("{} is refused: {error}", path.display()));
            for event in decoded {
                let instance = serde_json::to_value(&event).unwrap();
                let errors: Vec<String> = validator
                    .iter_errors(&instance)
                    .map(|error| error.to_string())
                    .collect();
                assert!(
                    errors.is_empty(),
                    "{} decodes to {instance} which fails the schema: {errors:?}",
                    path.display()
                );
                events += 1;
            }
        }
        assert!(
            events > 0,
            "the {format} examples decode to no event at all"
        );
    }
}

/// The violation examples pass the schema and read as violations; a violation tandem writes
/// passes the schema too.
#[test]
fn violations_match_their_schema() {
    let schema: serde_json::Value = serde_json::from_slice(
        &std::fs::read(schemas_dir().join("violation.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let check = |what: &str, instance: &serde_json::Value| {
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|error| error.to_string())
            .collect();
        assert!(errors.is_empty(), "{what} fails the schema: {errors:?}");
    };
    let directory = schemas_dir().join("examples").join("violations");
    let mut checked = 0;
    for entry in std::fs::read_dir(&directory).unwrap() {
        let path = entry.unwrap().path();
        let instance: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        check(&path.display().to_string(), &instance);
        let violation: tandem_core::ownership::Violation =
            serde_json::from_value(instance.clone()).unwrap();
        check(
            "the example written back",
            &serde_json::to_value(&violation).unwrap(),
        );
        checked += 1;
    }
    assert!(checked >= 2);
    let unattributed = tandem_core::ownership::Violation {
        kind: tandem_core::ownership::ViolationKind::NonOwnerWrite,
        system: tandem_core::System::Target,
        entity: "contact".to_owned(),
        join_key: "unjoined:target:T9".to_owned(),
        native_id: "T9".to_owned(),
        actor: None,
        op: tandem_core::Op::Delete,
        fields: Vec::new(),
        occurred_at: tandem_core::Timestamp::from_unix_millis(1_793_610_000_000),
        event_id: "e9".to_owned(),
        owner: tandem_core::System::Source,
        epoch: 1,
    };
    check(
        "an unattributed delete",
        &serde_json::to_value(&unattributed).unwrap(),
    );
}

/// The compensation command example passes its schema and reads as a command.
#[test]
fn compensation_commands_match_their_schema() {
    let schema: serde_json::Value = serde_json::from_slice(
        &std::fs::read(schemas_dir().join("compensation-command.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let path = schemas_dir().join("examples/commands/restore-email.json");
    let instance: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|error| error.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    let command: tandem_core::ownership::Compensation = serde_json::from_value(instance).unwrap();
    let written = serde_json::to_value(&command).unwrap();
    assert!(
        validator.iter_errors(&written).next().is_none(),
        "{written}"
    );
    assert!(validator
        .iter_errors(&serde_json::json!({"type": "restore_fields"}))
        .next()
        .is_some());
}

/// schemathesis, with every check it has, finds no answer of a live daemon (on Apache Kafka,
/// with records, asked with the admin token) that schemas/openapi.yaml does not describe, and
/// no request the document allows that the daemon refuses. `schemas/schemathesis.toml` says
/// what it is told beyond the document, and why.
#[test]
fn a_live_daemon_answers_as_the_openapi_document_says() {
    use tandem_testkit::{
        free_port, minute, produce_json, source_contact, target_contact, Broker, ContactConfig,
        Daemon, Kafka, Topics,
    };
    const ADMIN: &str = "schemathesis-admin-0123456789";
    let topics = Topics::unique("schemathesis");
    let broker = Kafka::start(&[
        (&topics.source, 1),
        (&topics.target, 1),
        (&topics.dead_letters, 1),
    ]);
    produce_json(
        broker.bootstrap(),
        &topics.source,
        &[
            source_contact("s1", 1, "create", &minute(1), "c1@example.com"),
            source_contact("s2", 2, "create", &minute(2), "c2@example.com"),
        ],
    );
    produce_json(
        broker.bootstrap(),
        &topics.target,
        &[target_contact(
            "t1",
            1,
            "create",
            &minute(3),
            "other@example.com",
        )],
    );
    let directory = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = ContactConfig::new(broker.bootstrap(), &topics, port);
    config.admin_token = Some(ADMIN.to_owned());
    // Backups to a directory: POST /v1/backups takes one, GET lists them.
    let written = config.write(directory.path());
    let mut text = std::fs::read_to_string(&written).unwrap();
    text.push_str(&format!(
        "\n[backup]\ntarget = \"{}\"\nkeep = 2\n",
        directory.path().join("backups").display()
    ));
    std::fs::write(&written, text).unwrap();
    let daemon = Daemon::start(&written, port, &directory.path().join("tandem.log"));
    daemon.wait_for_applied(3, std::time::Duration::from_secs(120));
    tandem_testkit::wait_for(
        "the daemon to be ready",
        std::time::Duration::from_secs(120),
        || (daemon.readiness() == 200).then_some(()),
    );
    let st = tandem_testkit::installed_tool("python/bin/st");
    let output = std::process::Command::new(&st)
        .arg("--config-file")
        .arg(schemas_dir().join("schemathesis.toml"))
        .args(["--no-color", "run"])
        .arg(schemas_dir().join("openapi.yaml"))
        .args([
            "--url",
            &daemon.url,
            "--checks",
            "all",
            "--seed",
            "20261207",
        ])
        .args(["-H", &format!("Authorization: Bearer {ADMIN}")])
        .env(
            "SCHEMATHESIS_HOSTS_PATH",
            directory.path().join("hosts.toml"),
        )
        .current_dir(directory.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "{}: {error}; run scripts/setup.sh test (make test does)",
                st.display()
            )
        });
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{said}{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        daemon.log_tail()
    );
    // Every operation tested, and every generated case passed.
    let operations = schemas_dir().join("openapi.yaml");
    let count = std::fs::read_to_string(operations)
        .unwrap()
        .lines()
        .filter(|line| {
            let line = line.trim_start();
            line.starts_with("get:") || line.starts_with("post:")
        })
        .count();
    assert!(said.contains(&format!("Tested: {count}")), "{said}");
    let cases = said
        .lines()
        .find(|line| line.contains(" generated, "))
        .unwrap_or_else(|| panic!("no test case summary: {said}"));
    let numbers: Vec<&str> = cases.split_whitespace().collect();
    assert_eq!(
        (numbers.get(1), numbers.get(3)),
        (Some(&"generated,"), Some(&"passed")),
        "{cases}"
    );
    assert_eq!(
        numbers[0], numbers[2],
        "every generated case passed: {cases}"
    );
}
