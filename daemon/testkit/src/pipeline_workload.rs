//! The people and programs writing into the pipeline's CRMs: a sync job that copies the
//! legacy rows into the new CRM the way sync layers do, with faults; users of the legacy CRM;
//! a repair job and a rogue integration writing into the new one. All from seeds.

use std::collections::{BTreeMap, BTreeSet};

use postgres::Client;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::pipeline::{Crm, Crms, STAGES};

/// The sync layer's faults.
#[derive(Clone, Copy, Debug)]
pub struct SyncFaults {
    /// Share of changed rows it does not copy in a round (a later change copies the row).
    pub skip_rate: f64,
    /// Share of contacts whose job title it fills from the last name (a column shift).
    pub shift_rate: f64,
    /// Share of deals whose amount it writes in cents.
    pub cents_rate: f64,
}

/// A sync job: each round reads every legacy row, copies the ones that changed since it last
/// copied them into the new CRM by legacy id (update, or insert), and deletes the new rows
/// whose legacy row is gone. It writes as `sync-job`.
pub struct SyncJob {
    faults: SyncFaults,
    rng: ChaCha8Rng,
    /// Per legacy table and id, the row as last copied.
    copied: BTreeMap<(&'static str, i64), Vec<Option<String>>>,
}

impl SyncJob {
    pub fn new(seed: u64, faults: SyncFaults) -> SyncJob {
        SyncJob {
            faults,
            rng: ChaCha8Rng::seed_from_u64(seed),
            copied: BTreeMap::new(),
        }
    }

    /// One round; returns how many rows it wrote.
    pub fn run_once(&mut self, crms: &mut Crms) -> usize {
        let mut written = 0;
        for (legacy_table, new_table) in Crm::Legacy.tables().into_iter().zip(Crm::New.tables()) {
            let rows = legacy_rows(&mut crms.legacy, legacy_table);
            let mut present = BTreeSet::new();
            for (id, values) in rows {
                present.insert(id);
                let key = (legacy_table, id);
                if self.copied.get(&key) == Some(&values) {
                    continue;
                }
                if self.rng.random_bool(self.faults.skip_rate) {
                    continue;
                }
                self.copy(&mut crms.new, legacy_table, new_table, id, &values);
                self.copied.insert(key, values);
                written += 1;
            }
            let gone: Vec<i64> = self
                .copied
                .keys()
                .filter(|(table, id)| *table == legacy_table && !present.contains(id))
                .map(|(_, id)| *id)
                .collect();
            for id in gone {
                if self.rng.random_bool(self.faults.skip_rate) {
                    continue;
                }
                crms.new
                    .execute(
                        &format!("DELETE FROM {new_table} WHERE legacy_id = $1"),
                        &[&id.to_string()],
                    )
                    .expect("the sync job deletes");
                self.copied.remove(&(legacy_table, id));
                written += 1;
            }
        }
        written
    }

    fn copy(
        &mut self,
        new: &mut Client,
        legacy_table: &str,
        new_table: &str,
        id: i64,
        values: &[Option<String>],
    ) {
        let legacy_id = id.to_string();
        // References are translated through the new CRM's own rows, as a sync layer does.
        let company = |new: &mut Client, account: &Option<String>| -> Option<i64> {
            let account = account.as_ref()?;
            new.query_opt(
                "SELECT hs_object_id FROM companies WHERE legacy_id = $1",
                &[account],
            )
            .expect("the sync job reads companies")
            .map(|row| row.get(0))
        };
        let (columns, params): (&[&str], Vec<Box<dyn postgres::types::ToSql + Sync>>) =
            match legacy_table {
                "accounts" => (
                    &["name", "domain", "numberofemployees"],
                    vec![
                        Box::new(values[0].clone()),
                        Box::new(values[1].clone()),
                        Box::new(
                            values[2]
                                .as_ref()
                                .map(|text| text.parse::<i32>().expect("an integer")),
                        ),
                    ],
                ),
                "contacts" => {
                    let shifted = self.rng.random_bool(self.faults.shift_rate);
                    let title = if shifted {
                        values[1].clone()
                    } else {
                        values[3].clone()
                    };
                    (
                        &[
                            "firstname",
                            "lastname",
                            "email",
                            "jobtitle",
                            "associatedcompanyid",
                        ],
                        vec![
                            Box::new(values[0].clone()),
                            Box::new(values[1].clone()),
                            Box::new(values[2].clone()),
                            Box::new(title),
                            Box::new(company(new, &values[4])),
                        ],
                    )
                }
                _ => {
                    let cents = self.rng.random_bool(self.faults.cents_rate);
                    let amount = values[1].as_ref().map(|text| {
                        let amount: f64 = text.parse().expect("a decimal");
                        let amount = if cents { amount * 100.0 } else { amount };
                        format!("{amount:.2}")
                    });
                    let stage = values[2].as_ref().map(|stage| {
                        STAGES
                            .iter()
                            .find(|(legacy, _)| legacy == stage)
                            .map_or(stage.clone(), |(_, new)| (*new).to_owned())
                    });
                    (
                        &["dealname", "amount", "dealstage", "associatedcompanyid"],
                        vec![
                            Box::new(values[0].clone()),
                            Box::new(amount),
                            Box::new(stage),
                            Box::new(company(new, &values[3])),
                        ],
                    )
                }
            };
        let amount_cast = |column: &str| {
            if column == "amount" {
                "::text::numeric"
            } else {
                ""
            }
        };
        let assignments: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(index, column)| format!("{column} = ${}{}", index + 1, amount_cast(column)))
            .collect();
        let mut arguments: Vec<&(dyn postgres::types::ToSql + Sync)> =
            params.iter().map(|param| param.as_ref()).collect();
        arguments.push(&legacy_id);
        let updated = new
            .execute(
                &format!(
                    "UPDATE {new_table} SET {}, hs_updated_by_user_id = 'sync-job' WHERE legacy_id = ${}",
                    assignments.join(", "),
                    columns.len() + 1
                ),
                &arguments,
            )
            .expect("the sync job updates");
        if updated == 0 {
            let placeholders: Vec<String> = columns
                .iter()
                .enumerate()
                .map(|(index, column)| format!("${}{}", index + 1, amount_cast(column)))
                .collect();
            new.execute(
                &format!(
                    "INSERT INTO {new_table} ({}, legacy_id, hs_updated_by_user_id) VALUES ({}, ${}, 'sync-job')",
                    columns.join(", "),
                    placeholders.join(", "),
                    columns.len() + 1
                ),
                &arguments,
            )
            .expect("the sync job inserts");
        }
    }
}

/// Every row of a legacy table as text values in the order the sync job copies them.
fn legacy_rows(legacy: &mut Client, table: &str) -> Vec<(i64, Vec<Option<String>>)> {
    let query = match table {
        "accounts" => "SELECT id, name, website, employees::text FROM accounts ORDER BY id",
        "contacts" => "SELECT id, first_name, last_name, email, title, account_id::text FROM contacts ORDER BY id",
        _ => "SELECT id, name, amount::text, stage, account_id::text FROM opportunities ORDER BY id",
    };
    legacy
        .query(query, &[])
        .expect("the sync job reads the legacy CRM")
        .into_iter()
        .map(|row| {
            let id: i64 = row.get(0);
            let values = (1..row.len()).map(|index| row.get(index)).collect();
            (id, values)
        })
        .collect()
}

/// What the simulated people and integrations do, from one seed.
pub struct Workload {
    rng: ChaCha8Rng,
    /// Every write of the rogue integration into the new CRM: (entity, join key, native id).
    pub rogue_writes: Vec<(String, String, String)>,
}

const FIRST_NAMES: [&str; 6] = ["Ada", "Alan", "Grace", "Linus", "Barbara", "Edsger"];
const LAST_NAMES: [&str; 6] = [
    "Lovelace", "Turing", "Hopper", "Torvalds", "Liskov", "Dijkstra",
];
const TITLES: [&str; 4] = ["Engineer", "Buyer", "CFO", "Head of Sales"];

impl Workload {
    pub fn new(seed: u64) -> Workload {
        Workload {
            rng: ChaCha8Rng::seed_from_u64(seed),
            rogue_writes: Vec::new(),
        }
    }

    fn user(&mut self) -> &'static str {
        ["user:ann", "user:bo", "user:cy"][self.rng.random_range(0..3)]
    }

    /// Users create companies, contacts and deals in the legacy CRM.
    pub fn create_legacy(
        &mut self,
        legacy: &mut Client,
        companies: usize,
        contacts: usize,
        deals: usize,
    ) {
        for _ in 0..companies {
            let number: u32 = self.rng.random_range(1000..100_000);
            let user = self.user();
            legacy
                .execute(
                    "INSERT INTO accounts (name, website, employees, last_modified_by) VALUES ($1, $2, $3, $4)",
                    &[&format!("Company {number}"), &format!("company{number}.example"), &self.rng.random_range(1..5000_i32), &user],
                )
                .expect("a company");
        }
        let accounts = ids(legacy, "accounts");
        for _ in 0..contacts {
            let first = FIRST_NAMES[self.rng.random_range(0..FIRST_NAMES.len())];
            let last = LAST_NAMES[self.rng.random_range(0..LAST_NAMES.len())];
            let account = accounts[self.rng.random_range(0..accounts.len())];
            let user = self.user();
            let number: u32 = self.rng.random_range(1..1_000_000);
            legacy
                .execute(
                    "INSERT INTO contacts (first_name, last_name, email, title, account_id, last_modified_by) VALUES ($1, $2, $3, $4, $5, $6)",
                    &[&first, &last, &format!("{}.{number}@example.com", first.to_lowercase()), &TITLES[self.rng.random_range(0..TITLES.len())], &account, &user],
                )
                .expect("a contact");
        }
        for _ in 0..deals {
            let account = accounts[self.rng.random_range(0..accounts.len())];
            let stage = STAGES[self.rng.random_range(0..STAGES.len())].0;
            let user = self.user();
            let cents: i64 = self.rng.random_range(1_000..10_000_000);
            legacy
                .execute(
                    "INSERT INTO opportunities (name, amount, stage, account_id, last_modified_by) VALUES ($1, ($2::bigint / 100.0)::numeric(12,2), $3, $4, $5)",
                    &[&format!("Deal {}", self.rng.random_range(1..100_000)), &cents, &stage, &account, &user],
                )
                .expect("a deal");
        }
    }

    /// Users change and delete rows of the legacy CRM (companies are never deleted: contacts
    /// and deals point at them).
    pub fn change_legacy(&mut self, legacy: &mut Client, changes: usize) {
        for _ in 0..changes {
            let user = self.user();
            match self.rng.random_range(0..10) {
                0..=3 => {
                    let Some(id) = self.pick(legacy, "contacts") else {
                        continue;
                    };
                    let title = TITLES[self.rng.random_range(0..TITLES.len())];
                    legacy
                        .execute(
                            "UPDATE contacts SET title = $1, last_modified_by = $2 WHERE id = $3",
                            &[&title, &user, &id],
                        )
                        .expect("a contact update");
                }
                4..=5 => {
                    let Some(id) = self.pick(legacy, "opportunities") else {
                        continue;
                    };
                    let stage = STAGES[self.rng.random_range(0..STAGES.len())].0;
                    let cents: i64 = self.rng.random_range(1_000..10_000_000);
                    legacy
                        .execute("UPDATE opportunities SET stage = $1, amount = ($2::bigint / 100.0)::numeric(12,2), last_modified_by = $3 WHERE id = $4", &[&stage, &cents, &user, &id])
                        .expect("a deal update");
                }
                6 => {
                    let Some(id) = self.pick(legacy, "accounts") else {
                        continue;
                    };
                    let employees = self.rng.random_range(1..5000_i32);
                    legacy
                        .execute("UPDATE accounts SET employees = $1, last_modified_by = $2 WHERE id = $3", &[&employees, &user, &id])
                        .expect("a company update");
                }
                7 => {
                    let Some(id) = self.pick(legacy, "contacts") else {
                        continue;
                    };
                    legacy
                        .execute("DELETE FROM contacts WHERE id = $1", &[&id])
                        .expect("a contact delete");
                }
                8 => {
                    let Some(id) = self.pick(legacy, "opportunities") else {
                        continue;
                    };
                    legacy
                        .execute("DELETE FROM opportunities WHERE id = $1", &[&id])
                        .expect("a deal delete");
                }
                _ => self.create_legacy(legacy, 0, 1, 1),
            }
        }
    }

    /// The rogue integration: a web form that still writes into the new CRM, creating contacts
    /// (no legacy id) and changing e-mails of synced ones.
    pub fn rogue(&mut self, new: &mut Client, writes: usize) {
        for _ in 0..writes {
            if self.rng.random_bool(0.5) {
                let number: u32 = self.rng.random_range(1..1_000_000);
                let row = new
                    .query_one(
                        "INSERT INTO contacts (firstname, lastname, email, hs_updated_by_user_id) VALUES ('Web', 'Form', $1, 'integration:webform') RETURNING hs_object_id",
                        &[&format!("lead.{number}@example.com")],
                    )
                    .expect("a web form lead");
                let id: i64 = row.get(0);
                self.rogue_writes.push((
                    "contact".to_owned(),
                    format!("unjoined:target:{id}"),
                    id.to_string(),
                ));
            } else {
                let Some(row) = new
                    .query_opt("SELECT hs_object_id, legacy_id FROM contacts WHERE legacy_id IS NOT NULL ORDER BY random() LIMIT 1", &[])
                    .expect("a synced contact")
                else {
                    continue;
                };
                let (id, legacy_id): (i64, String) = (row.get(0), row.get(1));
                let number: u32 = self.rng.random_range(1..1_000_000);
                new.execute(
                    "UPDATE contacts SET email = $1, hs_updated_by_user_id = 'integration:webform' WHERE hs_object_id = $2",
                    &[&format!("form.{number}@example.com"), &id],
                )
                .expect("a web form update");
                self.rogue_writes
                    .push(("contact".to_owned(), legacy_id, id.to_string()));
            }
        }
    }

    /// The repair job fixes some job titles the sync layer shifted, in the new CRM.
    pub fn repair(&mut self, crms: &mut Crms, fixes: usize) {
        // The new CRM is linked into the legacy database (postgres_fdw) for the comparison.
        let rows = crms
            .legacy
            .query(
                "SELECT n.hs_object_id, l.title FROM new_crm_link.contacts n JOIN contacts l ON l.id::text = n.legacy_id WHERE n.jobtitle IS DISTINCT FROM l.title ORDER BY n.hs_object_id LIMIT $1",
                &[&(fixes as i64)],
            )
            .expect("the repair job finds shifted titles");
        for row in rows {
            let (id, title): (i64, Option<String>) = (row.get(0), row.get(1));
            crms.new
                .execute(
                    "UPDATE contacts SET jobtitle = $1, hs_updated_by_user_id = 'repair-bot' WHERE hs_object_id = $2",
                    &[&title, &id],
                )
                .expect("a repair");
        }
    }

    fn pick(&mut self, client: &mut Client, table: &str) -> Option<i64> {
        let ids = ids(client, table);
        (!ids.is_empty()).then(|| ids[self.rng.random_range(0..ids.len())])
    }
}

fn ids(client: &mut Client, table: &str) -> Vec<i64> {
    client
        .query(&format!("SELECT id FROM {table} ORDER BY id"), &[])
        .expect("ids")
        .into_iter()
        .map(|row| row.get(0))
        .collect()
}
