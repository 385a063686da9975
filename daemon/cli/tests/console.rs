//! The operator console in a real browser: Debian's Chromium, headless, driven through its
//! WebDriver (chromedriver). What every page shows must equal what the API answers; a change
//! needs the admin token, a reason and the dry run first; CRM text stays text. Screenshots of
//! every page are kept under `<target>/tmp/console-screenshots/` for people to look at.

use tandem_testkit as common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use common::{
    free_port, minute, produce_json, source_contact, target_contact, wait_for, Broker,
    ContactConfig, Daemon, Kafka, Topics,
};

const DEADLINE: Duration = Duration::from_secs(120);
const ADMIN: &str = "console-admin-0123456789abcdef";
const READ: &str = "console-read-0123456789abcdef";
/// A CRM value that would be markup if the console parsed it.
const MARKUP: &str = "<img src=x onerror=alert(1)>@example.com";
/// A native id a spreadsheet would run as a formula.
const FORMULA_ID: &str = "=HYPERLINK(\"http://example.com\",\"x\")";

/// chromedriver, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let binary = PathBuf::from("/usr/bin/chromedriver");
        assert!(
            binary.exists() && PathBuf::from("/usr/bin/chromium").exists(),
            "Chromium and chromedriver are missing: run scripts/setup.sh test"
        );
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver to answer", DEADLINE, || {
            let status: Value = ureq::get(&format!("{url}/status"))
                .call()
                .ok()?
                .body_mut()
                .read_json()
                .ok()?;
            (status["value"]["ready"] == json!(true)).then_some(())
        });
        Driver { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshots() -> PathBuf {
    let directory = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&directory).expect("the target directory is writable");
    directory
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("a screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).expect("saved");
}

/// The text of the element `css` once the page has drawn it. The console redraws itself
/// every 5 s: an element found just before a redraw is gone when it is read, and is then
/// looked for again in the page drawn anew.
async fn text(client: &Client, css: &str) -> String {
    for _ in 0..REDRAWN_AT_MOST {
        let element = client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("{css} is not on the page: {error}"));
        match element.text().await {
            Err(error) if error.is_stale_element_reference() => continue,
            read => return read.expect("the element's text"),
        }
    }
    panic!("{css} was redrawn under every read");
}

/// How many redraws a read of the page tries through before it gives up.
const REDRAWN_AT_MOST: usize = 10;

async fn texts(client: &Client, css: &str) -> Vec<String> {
    read_all(client, css, |element| async move { element.text().await }).await
}

async fn attributes(client: &Client, css: &str, name: &str) -> Vec<String> {
    read_all(client, css, |element| async move {
        element.attr(name).await.map(Option::unwrap_or_default)
    })
    .await
}

/// `read` of every element `css` in one drawing of the page: all again if a redraw came in
/// between.
async fn read_all<F, R>(client: &Client, css: &str, read: F) -> Vec<String>
where
    F: Fn(fantoccini::elements::Element) -> R,
    R: std::future::Future<Output = Result<String, fantoccini::error::CmdError>>,
{
    'drawing: for _ in 0..REDRAWN_AT_MOST {
        let mut all = Vec::new();
        for element in client.find_all(Locator::Css(css)).await.expect("a query") {
            match read(element).await {
                Ok(value) => all.push(value),
                Err(error) if error.is_stale_element_reference() => continue 'drawing,
                Err(error) => panic!("reading {css}: {error}"),
            }
        }
        return all;
    }
    panic!("{css} was redrawn under every read");
}

/// Opens a page of the console and waits until it has drawn it afresh.
async fn open(client: &Client, base: &str, hash: &str, ready: &str) {
    client
        .goto(&format!("{base}/{hash}"))
        .await
        .expect("the page opens");
    client.refresh().await.expect("the page loads");
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(ready))
        .await
        .unwrap_or_else(|error| panic!("{hash}: {ready} never drawn: {error}"));
}

async fn click(client: &Client, id: &str) {
    client
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|error| panic!("#{id} is not on the page: {error}"))
        .click()
        .await
        .unwrap_or_else(|error| panic!("#{id} cannot be clicked: {error}"));
}

async fn type_into(client: &Client, id: &str, text: &str) {
    client
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|error| panic!("#{id} is not on the page: {error}"))
        .send_keys(text)
        .await
        .unwrap_or_else(|error| panic!("#{id} takes no text: {error}"));
}

async fn use_token(client: &Client, token: &str) {
    click(client, "token-button").await;
    type_into(client, "token-input", token).await;
    client
        .find(Locator::Css("#token-form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

fn percent(parity: f64) -> String {
    format!("{:.2}%", parity * 100.0)
}

/// Five contacts worked out by hand: L1 and L3 equal, L2's e-mail differs (and is markup, and
/// the sync layer wrote it),
/// L4 never reaches the target, the target's L9 (its native id a formula) has no source.
/// A last unchanged L1 two hours on moves the clock past the grace period.
fn produce(broker: &Kafka, topics: &Topics) {
    let mut source = Vec::new();
    for number in 1..=4 {
        source.push(source_contact(
            &format!("s{number}"),
            number,
            "create",
            &minute(i64::from(number)),
            &format!("c{number}@example.com"),
        ));
    }
    source.push(source_contact(
        "s5",
        1,
        "update",
        &minute(120),
        "c1@example.com",
    ));
    let mut target = vec![
        target_contact("t1", 1, "create", &minute(10), "c1@example.com"),
        target_contact("t2", 2, "create", &minute(11), MARKUP),
        target_contact("t3", 3, "create", &minute(12), "c3@example.com"),
    ];
    // The sync layer wrote L2's copy.
    target[1]["actor"] = json!({"kind": "sync"});
    let mut formula = target_contact("t9", 9, "create", &minute(13), "c9@example.com");
    formula["id"] = json!(FORMULA_ID);
    target.push(formula);
    produce_json(broker.bootstrap(), &topics.source, &source);
    produce_json(broker.bootstrap(), &topics.target, &target);
}

#[test]
fn the_console_shows_what_the_api_answers_and_changes_need_a_dry_run_first() {
    let topics = Topics::unique("console");
    let broker = Kafka::start(&[
        (&topics.source, 1),
        (&topics.target, 1),
        (&topics.dead_letters, 1),
    ]);
    produce(&broker, &topics);
    let directory = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = ContactConfig::new(broker.bootstrap(), &topics, port);
    config.admin_token = Some(ADMIN.to_owned());
    let path = config.write(directory.path());
    let text_config = std::fs::read_to_string(&path).unwrap().replace(
        &format!("admin_token = \"{ADMIN}\"\n"),
        &format!("admin_token = \"{ADMIN}\"\nread_token = \"{READ}\"\n"),
    );
    std::fs::write(&path, text_config).unwrap();
    let mut daemon = Daemon::start(&path, port, &directory.path().join("tandem.log"));
    daemon.token = Some(READ.to_owned());
    let report = daemon.wait_for_applied(9, DEADLINE);
    assert_eq!(report.totals.records, 5, "{report:?}");

    let driver = Driver::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(drive(&driver, &daemon));
    // The step taken in the browser is the API's: phase, reason and who asked.
    let cutover: Value = daemon.get("/v1/cutover");
    assert_eq!(cutover["phase"], json!("frozen"), "{cutover}");
    let after: Value = daemon.get("/v1/report");
    assert!(
        after["reevaluation"].is_object() || after["last_reevaluation"].is_object(),
        "the re-evaluation the console started: {after}"
    );
    let last = cutover["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (&last["reason"], &last["caller"]["token"]),
        (&json!("freeze for the weekend test"), &json!("admin")),
        "{last}"
    );
}

async fn drive(driver: &Driver, daemon: &Daemon) {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({"binary": "/usr/bin/chromium",
               "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--window-size=1400,1100"]}),
    );
    let client = ClientBuilder::native()
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session");
    let base = daemon.url.clone();

    // Without a token the API refuses, and the console asks for one.
    client.goto(&format!("{base}/")).await.unwrap();
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#token-panel:not([hidden])"))
        .await
        .expect("the console asks for a token");
    screenshot(&client, "0-token").await;
    use_token(&client, READ).await;

    // Parity: the totals and every entity's statuses, as /v1/report has them.
    let report: Value = daemon.get("/v1/report");
    open(&client, &base, "#/", "#total-records").await;
    assert_eq!(
        text(&client, "#total-records").await,
        report["totals"]["records"].to_string()
    );
    assert_eq!(
        text(&client, "#total-parity").await,
        percent(report["totals"]["parity"].as_f64().unwrap())
    );
    let contact = &report["entities"]["contact"];
    for (status, count) in contact["by_status"].as_object().unwrap() {
        assert_eq!(
            text(
                &client,
                &format!("#entities tr[data-entity=contact] td[data-status={status}]")
            )
            .await,
            count.to_string(),
            "{status}"
        );
    }
    // Hand-worked: two in sync, one mismatch, one missing in each system.
    let counted: serde_json::Map<String, Value> = contact["by_status"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, count)| **count != json!(0))
        .map(|(status, count)| (status.clone(), count.clone()))
        .collect();
    assert_eq!(
        Value::Object(counted),
        json!({"in_sync": 2, "mismatch": 1, "missing_in_target": 1, "missing_in_source": 1})
    );
    for (counter, system) in [("events_applied", "source"), ("events_applied", "target")] {
        assert_eq!(
            text(
                &client,
                &format!("#ingest-systems tr[data-system={system}] td[data-field={counter}]")
            )
            .await,
            report["ingest"][system][counter].to_string()
        );
    }
    screenshot(&client, "1-parity").await;

    // Divergences, filtered and paged as the API pages them.
    let all: Value = daemon.get("/v1/divergences?entity=contact");
    let keys: Vec<String> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["join_key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, ["L2", "L4", "L9"]);
    let first: Value = daemon.get("/v1/divergences?entity=contact&limit=2");
    open(
        &client,
        &base,
        "#/divergences?entity=contact&limit=2",
        "#divergence-list",
    )
    .await;
    let first_keys = attributes(&client, "#divergence-list tbody tr", "data-key").await;
    assert_eq!(first_keys, keys[..2]);
    assert!(first["next_cursor"].is_string());
    screenshot(&client, "2-divergences").await;
    client
        .find(Locator::Id("next-page"))
        .await
        .expect("a next page, as the API has one")
        .click()
        .await
        .unwrap();
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#divergence-list tbody tr[data-key=L9]"))
        .await
        .expect("the second page");
    assert_eq!(
        attributes(&client, "#divergence-list tbody tr", "data-key").await,
        keys[2..]
    );
    let mismatches: Value = daemon.get("/v1/divergences?entity=contact&status=mismatch");
    open(
        &client,
        &base,
        "#/divergences?entity=contact&status=mismatch",
        "#divergence-list",
    )
    .await;
    assert_eq!(
        texts(&client, "#divergence-list tbody td[data-field=status]").await,
        mismatches["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["status"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    );

    // The CSV of every page: the API's records, and the formula id made text.
    open(
        &client,
        &base,
        "#/divergences?entity=contact",
        "#csv-download",
    )
    .await;
    click(&client, "csv-download").await;
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Id("csv-link"))
        .await
        .expect("the CSV is built");
    let csv = client
        .execute_async(
            "const done = arguments[0]; fetch(document.getElementById('csv-link').href).then((r) => r.text()).then(done);",
            vec![],
        )
        .await
        .expect("the CSV is read");
    let csv = csv.as_str().unwrap().to_owned();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "entity,join_key,status,cause,fields,since,source_ids,target_ids"
    );
    assert_eq!(rows.len(), 1 + keys.len(), "{csv}");
    assert!(
        csv.contains("\"'=HYPERLINK(\"\"http://example.com\"\",\"\"x\"\")\""),
        "the formula id is text in the CSV: {csv}"
    );

    // A record: both sides, the field diff and the timelines, as /v1/records has them. The
    // CRM's markup is shown as the text it is.
    let record: Value = daemon.get("/v1/records/contact/L2");
    open(&client, &base, "#/record/contact/L2", "#record-status").await;
    assert_eq!(
        text(&client, "#record-status").await,
        record["status"].as_str().unwrap()
    );
    assert_eq!(
        text(
            &client,
            "#record-diff tr[data-field=email] td[data-field=equal]"
        )
        .await,
        "differs"
    );
    // The target's writer is on its timeline, as the event says.
    assert_eq!(
        texts(&client, "tr[data-timeline=target] td:nth-child(3)").await,
        ["sync"]
    );
    let shown_email = text(&client, "#record-diff tr[data-field=email] td:nth-child(5)").await;
    assert_eq!(shown_email, MARKUP);
    assert!(client
        .find_all(Locator::Css("#record img"))
        .await
        .unwrap()
        .is_empty());
    let history = record["history"].as_array().unwrap();
    for system in ["source", "target"] {
        assert_eq!(
            client
                .find_all(Locator::Css(&format!("tr[data-timeline={system}]")))
                .await
                .unwrap()
                .len(),
            history
                .iter()
                .filter(|item| item["system"] == json!(system))
                .count(),
            "{system} timeline"
        );
    }
    screenshot(&client, "3-record").await;

    // Ownership: every writer the API lists, per system, with its writes.
    let writers: Value = daemon.get("/v1/writers");
    open(&client, &base, "#/ownership", "#writers").await;
    for system in ["source", "target"] {
        let listed = writers["systems"][system].as_array().unwrap();
        let kinds = texts(
            &client,
            &format!("#writers tr[data-system={system}] td[data-field=kind]"),
        )
        .await;
        let writes = texts(
            &client,
            &format!("#writers tr[data-system={system}] td[data-field=writes]"),
        )
        .await;
        assert_eq!(
            kinds,
            listed
                .iter()
                .map(|writer| writer["kind"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>(),
            "{system}"
        );
        assert_eq!(
            writes,
            listed
                .iter()
                .map(|writer| writer["writes"].to_string())
                .collect::<Vec<_>>(),
            "{system}"
        );
    }
    // Hand-worked: the sync layer is among the target's writers.
    let target_kinds = texts(
        &client,
        "#writers tr[data-system=target] td[data-field=kind]",
    )
    .await;
    assert!(
        target_kinds.iter().any(|kind| kind == "sync"),
        "{target_kinds:?}"
    );
    screenshot(&client, "4-ownership").await;

    // The cutover: the phase and every gate, measured, threshold and since-when.
    let readiness: Value = daemon.get("/v1/cutover/readiness");
    open(&client, &base, "#/cutover", "#phase").await;
    assert_eq!(text(&client, "#phase").await, "parallel_run");
    assert_eq!(
        text(&client, "#verdict").await,
        readiness["verdict"].as_str().unwrap()
    );
    for gate in readiness["gates"].as_array().unwrap() {
        let row = format!(
            "#gates tr[data-gate=\"{}:{}\"]",
            gate["gate"].as_str().unwrap(),
            gate["entity"].as_str().unwrap_or_default()
        );
        assert_eq!(
            text(&client, &format!("{row} td[data-field=measured]")).await,
            gate["measured"].as_str().unwrap()
        );
        assert_eq!(
            text(&client, &format!("{row} td[data-field=threshold]")).await,
            gate["threshold"].as_str().unwrap()
        );
    }

    // A step: the read token is refused; with the admin token the dry run comes first, and
    // only then can the step be taken.
    let reason = client.find(Locator::Id("reason-freeze")).await.unwrap();
    reason
        .send_keys("freeze for the weekend test")
        .await
        .unwrap();
    let take = client.find(Locator::Id("take-freeze")).await.unwrap();
    assert!(
        !take.is_enabled().await.unwrap(),
        "no step before its dry run"
    );
    click(&client, "dry-run-freeze").await;
    let refused = text(&client, "#preview-freeze .problem").await;
    assert!(refused.contains("admin"), "{refused}");
    use_token(&client, ADMIN).await;
    open(&client, &base, "#/cutover", "#reason-freeze").await;
    type_into(&client, "reason-freeze", "freeze for the weekend test").await;
    click(&client, "dry-run-freeze").await;
    assert_eq!(
        text(&client, "#preview-verdict-freeze").await,
        "Allowed: parallel_run → frozen"
    );
    screenshot(&client, "5-cutover-dry-run").await;
    let cutover: Value = daemon.get("/v1/cutover");
    assert_eq!(
        cutover["phase"],
        json!("parallel_run"),
        "a dry run changes nothing"
    );
    let take = client.find(Locator::Id("take-freeze")).await.unwrap();
    assert!(take.is_enabled().await.unwrap());
    take.click().await.unwrap();
    assert_eq!(
        text(&client, "#taken-freeze").await,
        "Taken: parallel_run → frozen"
    );
    // The page keeps itself current: the new phase shows without a reload.
    let mut phase = String::new();
    for _ in 0..60 {
        phase = text(&client, "#phase").await;
        if phase == "frozen" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(phase, "frozen", "the console redraws itself every 5 s");
    screenshot(&client, "6-cutover-taken").await;

    // A re-evaluation: its preview first, then the admin's start, with a reason.
    open(&client, &base, "#/", "#reevaluate-reason").await;
    let confirm = client
        .find(Locator::Id("reevaluate-confirm"))
        .await
        .unwrap();
    assert!(
        !confirm.is_enabled().await.unwrap(),
        "nothing starts unseen"
    );
    type_into(&client, "reevaluate-reason", "rules changed in CAB-7").await;
    click(&client, "reevaluate-preview-button").await;
    let preview = text(&client, "#reevaluate-preview").await;
    assert!(
        preview.contains(&format!(
            "all {} stored records",
            report["totals"]["records"]
        )),
        "{preview}"
    );
    click(&client, "reevaluate-confirm").await;
    assert_eq!(text(&client, "#reevaluate-done").await, "Started.");
    client.close().await.expect("the session ends");
}
