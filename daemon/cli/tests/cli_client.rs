//! The command line as a client of a running daemon: how it finds it, what it prints when the
//! daemon refuses, which formats each command has, and a reader that goes away. The daemon
//! runs without a broker: the API answers regardless.

use tandem_testkit as common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{free_port, Daemon, Topics};

const ADMIN: &str = "admin-token-0123456789abcdef";
const READ: &str = "read-token-0123456789abcdef";

fn start(directory: &Path, api: &str) -> (Daemon, PathBuf, u16) {
    common::daemon_without_broker(directory, api)
}

/// `tandem <args>` with `TANDEM_TOKEN=token` (and nothing else from the environment that
/// names a daemon).
fn tandem(args: &[&str], token: Option<&str>) -> Output {
    let mut command = Command::new(common::tandem_binary());
    command
        .args(args)
        .env_remove("TANDEM_URL")
        .env_remove("TANDEM_CONFIG")
        .env_remove("TANDEM_TOKEN");
    if let Some(token) = token {
        command.env("TANDEM_TOKEN", token);
    }
    command.output().expect("the CLI runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_daemon_is_found_by_host_and_port_and_each_command_offers_only_its_formats() {
    let directory = tempfile::tempdir().unwrap();
    let (mut daemon, config, port) = start(
        directory.path(),
        &format!("admin_token = \"{ADMIN}\"\nread_token = \"{READ}\""),
    );
    daemon.token = Some(READ.to_owned());
    let bare = format!("127.0.0.1:{port}");

    // `host:port` is the daemon at http://host:port.
    let owned = tandem(
        &["ownership", "--format", "json", "--url", &bare],
        Some(READ),
    );
    assert!(owned.status.success(), "{}", text(&owned.stderr));
    let ownership: serde_json::Value = serde_json::from_slice(&owned.stdout).unwrap();
    assert!(ownership["entities"].is_array(), "{ownership}");
    let wrong_scheme = tandem(&["ownership", "--url", "ftp://127.0.0.1:1"], Some(READ));
    assert!(!wrong_scheme.status.success());
    assert!(
        text(&wrong_scheme.stderr).contains("http://host:port"),
        "{}",
        text(&wrong_scheme.stderr)
    );

    // A format a command does not have is refused, naming the ones it has.
    let file = config.display().to_string();
    for args in [
        vec!["record", "contact", "L1", "--url", &bare],
        vec!["writers", "--url", &bare],
        vec!["ownership", "--url", &bare],
        vec!["cutover", "status", "--url", &bare],
        vec!["check-config", &file],
    ] {
        let mut args = args.clone();
        args.extend(["--format", "csv"]);
        let refused = tandem(&args, Some(READ));
        assert_eq!(refused.status.code(), Some(2), "{args:?}");
        assert!(
            text(&refused.stderr).contains("[possible values: table, json]"),
            "{args:?}: {}",
            text(&refused.stderr)
        );
        assert!(refused.stdout.is_empty(), "{args:?}");
    }
    let history = tandem(
        &["report", "--history", "--format", "csv", "--url", &bare],
        Some(READ),
    );
    assert_eq!(history.status.code(), Some(2));
    assert!(
        text(&history.stderr).contains("no CSV form"),
        "{}",
        text(&history.stderr)
    );

    // JSON is the API's own answer, page and cursor included.
    for (command, path) in [
        ("divergences", "/v1/divergences?limit=100"),
        ("violations", "/v1/violations?limit=1000"),
    ] {
        let listed = tandem(&[command, "--format", "json", "--url", &bare], Some(READ));
        assert!(listed.status.success(), "{}", text(&listed.stderr));
        let from_cli: serde_json::Value = serde_json::from_slice(&listed.stdout)
            .unwrap_or_else(|error| panic!("{command}: {error}: {}", text(&listed.stdout)));
        let from_api: serde_json::Value = daemon.get(path);
        assert_eq!(from_cli, from_api, "{command}");
        assert!(from_cli.get("next_cursor").is_some(), "{from_cli}");
    }
}

#[test]
fn a_refused_step_fails_once_with_the_daemons_reason_previewed_or_taken() {
    let directory = tempfile::tempdir().unwrap();
    let (_daemon, _, port) = start(
        directory.path(),
        &format!("admin_token = \"{ADMIN}\"\nread_token = \"{READ}\""),
    );
    let url = format!("http://127.0.0.1:{port}");
    let step = |args: &[&str], token: Option<&str>| {
        let mut all = vec!["cutover"];
        all.extend(args);
        all.extend(["--url", &url]);
        tandem(&all, token)
    };

    // From the parallel run, `complete` is refused: as a preview and for real.
    for dry_run in [true, false] {
        let mut args = vec!["complete", "--reason", "trying"];
        if dry_run {
            args.push("--dry-run");
        }
        let refused = step(&args, Some(ADMIN));
        assert_eq!(refused.status.code(), Some(1), "dry run {dry_run}");
        assert!(
            text(&refused.stdout).contains("refused:"),
            "dry run {dry_run}: {}",
            text(&refused.stdout)
        );
    }
    // A step that may be taken previews with success, and takes nothing.
    let preview = step(&["freeze", "--reason", "trying", "--dry-run"], Some(ADMIN));
    assert!(preview.status.success(), "{}", text(&preview.stderr));
    assert!(text(&preview.stdout).starts_with("dry run: freeze"));
    let status = step(&["status", "--format", "json"], Some(READ));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["cutover"]["phase"], "parallel_run", "{status}");

    // The read token is not enough: said once, on stderr, with the daemon's hint.
    let refused = step(&["freeze", "--reason", "trying"], Some(READ));
    assert_eq!(refused.status.code(), Some(1));
    let said = text(&refused.stderr);
    assert_eq!(said.matches("not authorized").count(), 1, "{said}");
    assert!(said.contains("HTTP 401"), "{said}");
    assert!(said.contains("admin token"), "{said}");
    assert!(refused.stdout.is_empty(), "{}", text(&refused.stdout));
}

#[test]
fn without_an_admin_token_configured_the_refusal_says_where_to_set_it() {
    let directory = tempfile::tempdir().unwrap();
    let (_daemon, _, port) = start(directory.path(), &format!("read_token = \"{READ}\""));
    let refused = tandem(
        &[
            "cutover",
            "freeze",
            "--reason",
            "trying",
            "--url",
            &format!("127.0.0.1:{port}"),
        ],
        Some(READ),
    );
    assert_eq!(refused.status.code(), Some(1));
    let said = text(&refused.stderr);
    assert_eq!(said.matches("not authorized").count(), 1, "{said}");
    assert!(said.contains("HTTP 403"), "{said}");
    assert!(said.contains("api.admin_token"), "{said}");
    // No token on this side would help: none is suggested.
    assert!(!said.contains("TANDEM_TOKEN"), "{said}");
}

/// Tables fit the width asked for (`COLUMNS`, as a terminal sets it): long cells wrap.
#[test]
fn tables_fit_the_width_they_are_given() {
    let directory = tempfile::tempdir().unwrap();
    let (_daemon, _config, port) = start(directory.path(), "");
    let url = format!("http://127.0.0.1:{port}");
    let widest = |columns: Option<&str>| {
        let mut command = Command::new(common::tandem_binary());
        command
            .args(["cutover", "status", "--url", &url])
            .env_remove("TANDEM_TOKEN");
        match columns {
            Some(columns) => command.env("COLUMNS", columns),
            None => command.env_remove("COLUMNS"),
        };
        let output = command.output().expect("the CLI runs");
        assert!(output.status.success(), "{}", text(&output.stderr));
        text(&output.stdout)
            .lines()
            .filter(|line| line.starts_with(['┌', '│', '├', '└', '╞', '╘']))
            .map(|line| line.chars().count())
            .max()
            .expect("a table")
    };
    let whole = widest(None);
    assert!(
        whole > 60,
        "the gates table is wider than 60 columns when piped: {whole}"
    );
    assert!(widest(Some("60")) <= 60);
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    let directory = tempfile::tempdir().unwrap();
    let config = common::write_config(
        directory.path(),
        "127.0.0.1:9",
        &Topics::unique("pipe"),
        free_port(),
        100,
        false,
    );
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(common::tandem_binary())
        .args([
            "check-config",
            &config.display().to_string(),
            "--format",
            "json",
        ])
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(output.stderr.is_empty(), "{}", text(&output.stderr));
}

#[test]
fn completions_load_in_the_shell_and_the_manual_names_every_command() {
    let script = tandem(&["completions", "bash"], None);
    assert!(script.status.success());
    // bash itself reads the script and registers the completion.
    let registered = common::output_with_input(
        Command::new("bash").args(["-c", "source /dev/stdin && complete -p tandem"]),
        &script.stdout,
    );
    assert!(
        text(&registered.stdout).contains("-F _tandem tandem"),
        "{}{}",
        text(&registered.stdout),
        text(&registered.stderr)
    );
    for shell in ["zsh", "fish"] {
        let script = tandem(&["completions", shell], None);
        assert!(script.status.success(), "{shell}");
        assert!(text(&script.stdout).contains("divergences"), "{shell}");
    }
    assert_eq!(
        tandem(&["completions", "tcsh"], None).status.code(),
        Some(2)
    );

    // Every command `tandem --help` lists has its place in the manual.
    let help = text(&tandem(&["--help"], None).stdout);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|command| *command != "help")
        .collect();
    assert!(commands.len() >= 15, "{commands:?}");
    let manual = text(&tandem(&["man"], None).stdout);
    assert!(manual.contains(".TH tandem 1"), "{manual}");
    // A command's own page has its options (roff writes `-` as `\-`).
    let cutover = text(&tandem(&["man", "cutover"], None).stdout);
    assert!(cutover.contains(".TH tandem-cutover 1"), "{cutover}");
    assert!(cutover.contains("\\-\\-dry\\-run"), "{cutover}");
    assert_eq!(tandem(&["man", "nonsense"], None).status.code(), Some(2));
    // A closed pipe ends the script quietly.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let piped = Command::new(common::tandem_binary())
        .args(["completions", "bash"])
        .stdout(Stdio::from(writer))
        .output()
        .unwrap();
    assert_eq!(piped.status.code(), Some(0), "{}", text(&piped.stderr));
    for command in commands {
        assert!(
            // roff writes a hyphen as `\-`.
            manual.contains(&format!("tandem\\-{}", command.replace('-', "\\-"))),
            "{command} is not in the manual"
        );
    }
}
