use serde_json::json;
use std::time::Duration;
use tandem_testkit::connect::KafkaConnect;
use tandem_testkit::postgres::Postgres;
use tandem_testkit::{Broker, Kafka};

fn dump(kafka: &Kafka, topic: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let c: BaseConsumer = kafka
        .client_config()
        .set("group.id", format!("dump-{}", rand_id()))
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    loop {
        match c.poll(Duration::from_secs(5)) {
            Some(Ok(m)) => {
                let h: Vec<String> = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                format!(
                                    "{}={}",
                                    x.key,
                                    String::from_utf8_lossy(x.value.unwrap_or_default())
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                println!(
                    "[{topic}@{}] key={} headers={:?}\n   {}",
                    m.offset(),
                    String::from_utf8_lossy(m.key().unwrap_or_default()),
                    h,
                    String::from_utf8_lossy(m.payload().unwrap_or(b"<null>"))
                );
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => break,
            Some(Err(e)) => {
                println!("err {e}");
                break;
            }
        }
    }
}
fn rand_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn scratch() {
    let kafka = Kafka::start(&[("legacy.signals", 1)]);
    let pg = Postgres::start();
    pg.create_database("legacy");
    let mut db = pg.client("legacy");
    db.batch_execute("create table contacts(id bigserial primary key, email text, amount numeric(12,2), closes date, last_modified_by text);
        create table debezium_signal(id varchar(64) primary key, type varchar(32) not null, data varchar(2048));
        insert into contacts(email, amount, closes, last_modified_by) values ('a@x.io', 12.50, '2026-12-01', 'user:ann'),('b@x.io', 3, null, 'user:ann');").unwrap();
    let connect = KafkaConnect::start(&kafka);
    connect.put_connector("legacy", &json!({
        "connector.class":"io.debezium.connector.postgresql.PostgresConnector",
        "database.hostname":"127.0.0.1","database.port": pg.port().to_string(),"database.user":"postgres","database.password":"unused","database.dbname":"legacy",
        "topic.prefix":"legacy","plugin.name":"pgoutput","slot.name":"tandem_legacy","publication.autocreate.mode":"filtered",
        "table.include.list":"public.contacts,public.debezium_signal",
        "signal.enabled.channels":"source,kafka","signal.kafka.topic":"legacy.signals","signal.kafka.bootstrap.servers": kafka.bootstrap(),"signal.data.collection":"public.debezium_signal",
        "notification.enabled.channels":"sink","notification.sink.topic.name":"legacy.notifications",
        "decimal.handling.mode":"string",
        "topic.creation.default.replication.factor":"1","topic.creation.default.partitions":"1",
        "exactly.once.support":"required"
    }));
    std::thread::sleep(Duration::from_secs(8));
    db.batch_execute("update contacts set email='a2@x.io', last_modified_by='sync' where id=1; update contacts set id=10 where id=2; delete from contacts where id=1;").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    println!("===== after live changes");
    dump(&kafka, "legacy.public.contacts");
    dump(&kafka, "legacy.notifications");
    tandem_testkit::produce_messages(&kafka.client_config(), "legacy.signals", &[(Some(b"legacy".to_vec()), Some(br#"{"type":"execute-snapshot","data":{"data-collections":["public.contacts"],"type":"BLOCKING"}}"#.to_vec()))]);
    std::thread::sleep(Duration::from_secs(10));
    println!("===== after blocking");
    dump(&kafka, "legacy.public.contacts");
    dump(&kafka, "legacy.notifications");
    db.batch_execute("insert into contacts(email, last_modified_by) values ('c@x.io','user:bo');")
        .unwrap();
    tandem_testkit::produce_messages(&kafka.client_config(), "legacy.signals", &[(Some(b"legacy".to_vec()), Some(br#"{"type":"execute-snapshot","data":{"data-collections":["public.contacts"],"type":"INCREMENTAL","additional-conditions":[{"data-collection":"public.contacts","filter":"id IN (10)"}]}}"#.to_vec()))]);
    std::thread::sleep(Duration::from_secs(10));
    db.batch_execute("truncate contacts;").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    println!("===== after incremental + truncate");
    dump(&kafka, "legacy.public.contacts");
    dump(&kafka, "legacy.notifications");
    tandem_testkit::produce_messages(&kafka.client_config(), "legacy.signals", &[(Some(b"legacy".to_vec()), Some(br#"{"type":"execute-snapshot","data":{"data-collections":["public.contacts"],"type":"BLOCKING"}}"#.to_vec()))]);
    std::thread::sleep(Duration::from_secs(10));
    println!("===== after blocking of empty");
    dump(&kafka, "legacy.notifications");
    println!("{}", connect.log_tail());
}
