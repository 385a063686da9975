//! The HTTP surface against clients that misbehave: idle and flooding connections, wrong
//! paths and methods, retries with a wrong token. The real binary, spoken to over raw TCP so
//! that every byte of the answer is seen.

use tandem_testkit as common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{wait_for, Daemon};

const ADMIN: &str = "admin-token-0123456789abcdef";
const READ: &str = "read-token-0123456789abcdef";

/// A daemon whose broker is not there, with these `[api]` lines.
fn start(directory: &Path, api: &str) -> (Daemon, SocketAddr) {
    let (daemon, _, port) = common::daemon_without_broker(directory, api);
    (daemon, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A connection to `to` from the loopback address `from` (127.0.0.0/8 is all local).
fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        socket.connect(to).await.unwrap()
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
}

/// Sends one request on `stream` and reads the whole answer: the status and the body.
fn exchange(stream: TcpStream, request: &str) -> (u16, String) {
    let (status, _, body) = exchange_whole(stream, request);
    (status, body)
}

/// Sends one request on `stream` and reads the whole answer (the server closes, or says how
/// long the body is): the status, the head and the body.
fn exchange_whole(mut stream: TcpStream, request: &str) -> (u16, String, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = stream.read(&mut buffer).unwrap();
        answer.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|length| length.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(usize::MAX);
            if read == 0 || body.len() >= length {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return (status, head.to_owned(), body.to_owned());
            }
        }
        assert!(read > 0, "the connection closed mid-answer: {text:?}");
    }
}

fn request(method: &str, path: &str, token: Option<&str>) -> String {
    let authorization = token
        .map(|token| format!("authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    format!("{method} {path} HTTP/1.1\r\nhost: tandem\r\n{authorization}content-length: 0\r\nconnection: close\r\n\r\n")
}

#[test]
fn idle_connections_are_closed_and_a_flood_from_one_address_leaves_the_others_answered() {
    let directory = tempfile::tempdir().unwrap();
    let (_daemon, address) = start(
        directory.path(),
        "header_read_timeout = \"1s\"\nmax_connections = 100\nmax_connections_per_address = 8",
    );
    let flooder = [127, 0, 0, 2];
    // Eight connections that never send a byte fill the address's share.
    let idle: Vec<TcpStream> = (0..8).map(|_| connect_from(flooder, address)).collect();
    // Only once the daemon has taken them all is a ninth over the limit: it may take a
    // moment for the accepts to run.
    let (status, body) = wait_for(
        "a connection over the per-address limit to be refused",
        Duration::from_secs(10),
        || {
            let (status, body) = exchange(
                connect_from(flooder, address),
                &request("GET", "/healthz", None),
            );
            (status == 503).then_some((status, body))
        },
    );
    assert_eq!(status, 503);
    let refusal: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(refusal["error"], "too many connections");
    assert!(
        refusal["hint"]
            .as_str()
            .unwrap()
            .contains("max_connections_per_address"),
        "{refusal}"
    );
    // Meanwhile a probe from another address is answered.
    let (status, _) = exchange(
        connect_from([127, 0, 0, 1], address),
        &request("GET", "/healthz", None),
    );
    assert_eq!(status, 200);
    // The idle ones are closed by the daemon once the header-read timeout passes.
    let started = Instant::now();
    for mut connection in idle {
        connection
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buffer = [0u8; 64];
        let read = connection
            .read(&mut buffer)
            .expect("the daemon closes an idle connection instead of leaving it open");
        assert_eq!(read, 0, "an idle connection got an answer to nothing");
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "idle connections were held for {:?}",
        started.elapsed()
    );
    // Their places are free again.
    wait_for(
        "the flooding address to be served again",
        Duration::from_secs(10),
        || {
            let (status, _) = exchange(
                connect_from(flooder, address),
                &request("GET", "/healthz", None),
            );
            (status == 200).then_some(())
        },
    );
}

#[test]
fn wrong_paths_and_methods_are_told_before_tokens_are_asked_for() {
    let directory = tempfile::tempdir().unwrap();
    let (_daemon, address) = start(
        directory.path(),
        &format!("admin_token = \"{ADMIN}\"\nread_token = \"{READ}\""),
    );
    let ask = |method: &str, path: &str, token: Option<&str>| {
        exchange(
            connect_from([127, 0, 0, 1], address),
            &request(method, path, token),
        )
    };
    for (method, path) in [("POST", "/v1/report"), ("GET", "/v1/reevaluate")] {
        let (status, body) = ask(method, path, None);
        assert_eq!(status, 405, "{method} {path}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("{method} {path}: the 405 has no JSON body: {body:?}"));
        assert!(
            error["error"].as_str().unwrap().contains(method),
            "{method} {path}: {error}"
        );
        assert!(error["hint"].as_str().is_some_and(|hint| !hint.is_empty()));
    }
    let (status, _) = ask("GET", "/v1/no-such-thing", None);
    assert_eq!(status, 404);
    // A real endpoint still needs its token.
    assert_eq!(ask("GET", "/v1/report", None).0, 401);
    assert_eq!(ask("POST", "/v1/reevaluate", Some(READ)).0, 401);
}

/// Query parameters are read strictly: an empty value names its parameter (it was taken for
/// "absent" before, so `?status=` listed everything), a `since` far out in time is a bound
/// like any other (it was a 400), and `since=flip` before any flip is a conflict with the
/// cutover's state (409), not a malformed request.
#[test]
fn query_parameters_are_read_strictly_and_state_is_told_apart_from_syntax() {
    let directory = tempfile::tempdir().unwrap();
    let (_daemon, address) = start(directory.path(), &format!("read_token = \"{READ}\""));
    let ask = |path: &str| {
        let (status, body) = exchange(
            connect_from([127, 0, 0, 1], address),
            &request("GET", path, Some(READ)),
        );
        let body: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("GET {path}: not JSON: {body:?}"));
        (status, body)
    };
    for (path, parameter) in [
        ("/v1/divergences?status=", "status"),
        ("/v1/divergences?entity=contact&cursor=", "cursor"),
        ("/v1/writers?since=", "since"),
        ("/v1/violations?actor=", "actor"),
        ("/v1/delta?system=target&since=", "since"),
    ] {
        let (status, body) = ask(path);
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(
            body["error"],
            serde_json::json!(format!("query parameter `{parameter}` is empty")),
            "{path}"
        );
    }
    for path in [
        "/v1/writers?since=9999-12-31T23:59:59Z",
        "/v1/violations?since=0001-01-01T00:00:00Z",
        "/v1/report/history?since=2300-01-01T00:00:00%2B05:00",
    ] {
        let (status, body) = ask(path);
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, body) = ask("/v1/delta?system=target&since=flip");
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], serde_json::json!("there was no flip yet"));
}

#[test]
fn a_client_retrying_with_a_wrong_token_is_counted_every_time_and_logged_once() {
    let directory = tempfile::tempdir().unwrap();
    let (daemon, address) = start(directory.path(), &format!("read_token = \"{READ}\""));
    let attempts = 40;
    for _ in 0..attempts {
        let (status, _) = exchange(
            connect_from([127, 0, 0, 1], address),
            &request("GET", "/v1/report", Some("not-the-token-at-all")),
        );
        assert_eq!(status, 401);
    }
    let (status, metrics) = exchange(
        connect_from([127, 0, 0, 1], address),
        &request("GET", "/metrics", Some(READ)),
    );
    assert_eq!(status, 200);
    let counted = metrics
        .lines()
        .find_map(|line| line.strip_prefix("tandem_auth_failures_total{reason=\"wrong\"} "))
        .expect("the refusals are counted");
    assert_eq!(counted.trim(), attempts.to_string());
    drop(daemon);
    let log = std::fs::read_to_string(directory.path().join("tandem.log")).unwrap();
    let logged = log.matches("request refused").count();
    assert!(
        (1..=2).contains(&logged),
        "{attempts} refusals within seconds were logged {logged} times"
    );
}

/// `/metrics` passes `promtool check metrics`, the ownership violations are a counter, and
/// every metric the shipped dashboard and alerts ask for exists.
#[test]
fn metrics_pass_promtool() {
    let directory = tempfile::tempdir().unwrap();
    // A commit date and backups (sections of their own after `[api]`'s last line): their
    // gauges exist only then.
    let backups = directory.path().join("backups");
    let (_daemon, address) = start(
        directory.path(),
        &format!(
            "[cutover]\ncommit_date = \"2030-01-15\"\n\n[backup]\ntarget = \"{}\"",
            backups.display()
        ),
    );
    let (status, metrics) = exchange(
        connect_from([127, 0, 0, 1], address),
        &request("GET", "/metrics", None),
    );
    assert_eq!(status, 200);
    common::assert_promtool_accepts_metrics(&metrics);
    assert!(
        metrics.contains("# TYPE tandem_violations_total counter"),
        "{metrics}"
    );
    let declared: Vec<&str> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|declared| declared.split(' ').next())
        .collect();
    let ops = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops");
    let asked = std::fs::read_to_string(ops.join("grafana/tandem-dashboard.json")).unwrap()
        + &std::fs::read_to_string(ops.join("prometheus/alerts.yaml")).unwrap();
    let mut names: Vec<&str> = asked
        .match_indices("tandem_")
        .map(|(start, _)| {
            let rest = &asked[start..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 20, "{names:?}");
    // Replication's series need a broker (a standby and its changelog): tests/failover.rs
    // checks those on a replicated pair.
    for name in names
        .into_iter()
        .filter(|name| !name.starts_with("tandem_replication_"))
    {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            declared.contains(&base),
            "the dashboard or the alerts ask for {name}, which /metrics does not have"
        );
    }
    // The process's own figures, and the build: the commit git names for this checkout.
    assert!(
        metrics.contains("\nprocess_resident_memory_bytes "),
        "{metrics}"
    );
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .unwrap();
    // Where git cannot answer, the build could not either.
    let commit = Some(String::from_utf8_lossy(&commit.stdout).trim().to_owned())
        .filter(|text| commit.status.success() && !text.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    let build = format!(
        "tandem_build_info{{commit=\"{commit}\",version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(metrics.contains(&build), "{build} in {metrics}");
    let version = std::process::Command::new(common::tandem_binary())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("tandem {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
}

/// librdkafka retries a missing broker every second or faster, on three clients: the log says
/// so once per kind of error, not once per retry.
#[test]
fn a_broker_that_stays_away_is_logged_once_per_kind_of_error() {
    let directory = tempfile::tempdir().unwrap();
    let (_daemon, _) = start(directory.path(), "");
    let log = directory.path().join("tandem.log");
    // Noticed after the consumer's first statistics without a broker (about 10 s): by then
    // each client has retried several times.
    let text = wait_for(
        "the missing broker to be noticed",
        Duration::from_secs(60),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("no Kafka broker is reachable")
                .then_some(text)
        },
    );
    let refused = text
        .lines()
        .filter(|line| line.contains("Connection refused"))
        .count();
    let warnings = text
        .lines()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .count();
    // One connection error per client (the consumer, the dead-letter and the request
    // producers), and a few kinds of client error each.
    assert!(
        (1..=3 * 3).contains(&refused),
        "{refused} lines say the connection was refused (said at least once, at most a few times):\n{text}"
    );
    assert!(
        warnings <= 20,
        "{warnings} warnings in the first seconds:\n{text}"
    );
}

/// The daemon's whole log (once it stopped), and its line of the cutover step taken.
fn step_logged(directory: &Path) -> (String, String) {
    let log = std::fs::read_to_string(directory.join("tandem.log")).unwrap();
    let line = log
        .lines()
        .find(|line| line.contains("cutover step taken"))
        .unwrap_or_else(|| panic!("no step in the log:\n{log}"))
        .to_owned();
    (log, line)
}

/// The value of `name` in an answer's head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Every answer has a request id; a change keeps the token, the address and the id it came
/// with, whatever `by` the caller claims, and its log line says them.
#[test]
fn changes_keep_who_asked_as_the_api_established_it() {
    let directory = tempfile::tempdir().unwrap();
    let (daemon, address) = start(
        directory.path(),
        &format!("admin_token = \"{ADMIN}\"\nread_token = \"{READ}\""),
    );
    let ask = |from: [u8; 4], text: &str| exchange_whole(connect_from(from, address), text);
    let with_id = |id: &str, path: &str| {
        format!("GET {path} HTTP/1.1\r\nhost: tandem\r\nauthorization: Bearer {READ}\r\nx-request-id: {id}\r\nconnection: close\r\n\r\n")
    };
    let generated = |head: &str| {
        let id = header(head, "x-request-id").expect("every answer has a request id");
        assert!(
            id.len() == 32 && id.bytes().all(|byte| byte.is_ascii_hexdigit()),
            "{id}"
        );
        id.to_owned()
    };
    // Given one when none is sent, refusals and unknown paths included; a new one each time.
    let (_, first, _) = ask([127, 0, 0, 1], &request("GET", "/v1/report", Some(READ)));
    let (_, second, _) = ask([127, 0, 0, 1], &request("GET", "/v1/report", None));
    let (_, unknown, _) = ask([127, 0, 0, 1], &request("GET", "/nowhere", None));
    let ids = [generated(&first), generated(&second), generated(&unknown)];
    assert!(ids[0] != ids[1] && ids[1] != ids[2], "{ids:?}");
    // A caller's own is kept if it is plain, replaced if not.
    let (_, kept, _) = ask(
        [127, 0, 0, 1],
        &with_id("deploy-2026.12.07_1", "/v1/report"),
    );
    assert_eq!(header(&kept, "x-request-id"), Some("deploy-2026.12.07_1"));
    let (_, replaced, _) = ask([127, 0, 0, 1], &with_id("a b [INFO] forged", "/v1/report"));
    generated(&replaced);

    // A step taken from 127.0.0.3 with the admin token, claiming to be someone else.
    let body = r#"{"reason": "rehearsal", "by": "mallory token=read"}"#;
    let step = format!(
        "POST /v1/cutover/freeze HTTP/1.1\r\nhost: tandem\r\nauthorization: Bearer {ADMIN}\r\nx-request-id: freeze-1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, _, answer) = ask([127, 0, 0, 3], &step);
    assert_eq!(status, 200, "{answer}");
    let (_, _, cutover) = ask([127, 0, 0, 1], &request("GET", "/v1/cutover", Some(READ)));
    let cutover: serde_json::Value = serde_json::from_str(&cutover).unwrap();
    let taken = &cutover["history"][0];
    assert_eq!(taken["by"], "mallory token=read", "{taken}");
    assert_eq!(taken["caller"]["token"], "admin", "{taken}");
    assert_eq!(taken["caller"]["request_id"], "freeze-1", "{taken}");
    assert!(
        taken["caller"]["address"]
            .as_str()
            .is_some_and(|address| address.starts_with("127.0.0.3:")),
        "{taken}"
    );
    let (_, _, metrics) = ask([127, 0, 0, 1], &request("GET", "/metrics", Some(READ)));
    assert!(
        metrics.contains("tandem_cutover_phase{phase=\"frozen\"} 1")
            && metrics.contains("tandem_cutover_phase{phase=\"parallel_run\"} 0"),
        "{metrics}"
    );
    drop(daemon);
    let (_, line) = step_logged(directory.path());
    for said in [
        "request_id=freeze-1",
        "token=admin",
        "address=127.0.0.3:",
        // The claim is quoted: it cannot pass for a field of its own.
        "by=\"mallory token=read\"",
    ] {
        assert!(line.contains(said), "{said}: {line}");
    }
}

/// A token per person: the audit names who asked by the token they hold, and a read-only
/// token cannot make changes.
#[test]
fn named_tokens_are_who_the_audit_names() {
    use std::os::unix::fs::PermissionsExt;
    let directory = tempfile::tempdir().unwrap();
    let ann_file = directory.path().join("ann.token");
    std::fs::write(&ann_file, "ann-token-0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&ann_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (daemon, address) = start(
        directory.path(),
        &format!(
            "[[api.tokens]]\nname = \"ann\"\nrole = \"admin\"\ntoken_file = \"{}\"\n[[api.tokens]]\nname = \"grafana\"\nrole = \"read\"\ntoken = \"grafana-token-0123456789\"",
            ann_file.display()
        ),
    );
    let ask = |text: &str| exchange_whole(connect_from([127, 0, 0, 1], address), text);
    let step = |token: &str| {
        let body = r#"{"reason": "rehearsal"}"#;
        format!(
            "POST /v1/cutover/freeze HTTP/1.1\r\nhost: tandem\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    // Reads need a token now that a read token exists; grafana's reads, but may not change.
    assert_eq!(ask(&request("GET", "/v1/report", None)).0, 401);
    assert_eq!(
        ask(&request(
            "GET",
            "/v1/report",
            Some("grafana-token-0123456789")
        ))
        .0,
        200
    );
    assert_eq!(ask(&step("grafana-token-0123456789")).0, 401);
    assert_eq!(ask(&step("not-a-token-0123456789")).0, 401);
    let (status, _, answer) = ask(&step("ann-token-0123456789abcdef"));
    assert_eq!(status, 200, "{answer}");
    let (_, _, cutover) = ask(&request(
        "GET",
        "/v1/cutover",
        Some("grafana-token-0123456789"),
    ));
    let cutover: serde_json::Value = serde_json::from_str(&cutover).unwrap();
    assert_eq!(cutover["history"][0]["caller"]["token"], "ann", "{cutover}");
    drop(daemon);
    let (log, line) = step_logged(directory.path());
    assert!(line.contains("token=ann"), "{line}");
    assert!(
        !log.contains("ann-token-0123456789abcdef"),
        "a token was logged"
    );
}
