//! An S3-compatible object store for tests: moto's server (PyPI `moto[server]`, installed by
//! `scripts/setup.sh test` into the tools' virtual environment) on a free loopback port. It
//! keeps objects in memory and accepts any credentials; it speaks the S3 protocol the
//! `object_store` crate speaks to AWS, MinIO or Ceph.

use std::time::Duration;

use crate::supervised::Supervised;
use crate::{free_port, installed_tool, wait_for};

/// A running S3 server with one bucket.
pub struct S3Server {
    _process: Supervised,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The bucket created at start.
    pub bucket: String,
    _directory: tempfile::TempDir,
}

/// The credentials the tests give (the server takes any).
pub const ACCESS_KEY_ID: &str = "tandem-test";
/// The secret the tests give.
pub const SECRET_ACCESS_KEY: &str = "tandem-test-secret";

impl S3Server {
    /// Starts the server and creates `bucket`.
    pub fn start(bucket: &str) -> S3Server {
        let program = installed_tool("python/bin/moto_server");
        assert!(
            program.is_file(),
            "moto's S3 server is not installed at {}: run `make test` (scripts/setup.sh test installs it)",
            program.display()
        );
        let directory = tempfile::Builder::new()
            .prefix("tandem-s3-")
            .tempdir()
            .expect("a temporary directory");
        let port = free_port();
        let process = Supervised::spawn(
            None,
            program.as_os_str(),
            [
                "-H".to_owned(),
                "127.0.0.1".to_owned(),
                "-p".to_owned(),
                port.to_string(),
            ],
            "INT",
            &directory.path().join("moto.log"),
        );
        let endpoint = format!("http://127.0.0.1:{port}");
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build(),
        );
        wait_for("the S3 server", Duration::from_secs(60), || {
            agent.get(&format!("{endpoint}/")).call().ok()
        });
        let created = agent
            .put(&format!("{endpoint}/{bucket}"))
            .send_empty()
            .expect("the S3 server answers");
        assert!(
            created.status().is_success(),
            "creating bucket {bucket}: HTTP {}",
            created.status()
        );
        S3Server {
            _process: process,
            endpoint,
            bucket: bucket.to_owned(),
            _directory: directory,
        }
    }

    /// The `[backup]` section of a daemon writing to `prefix` of the bucket, its secret read
    /// from the environment variable `secret_variable`.
    pub fn backup_toml(&self, prefix: &str, secret_variable: &str) -> String {
        format!(
            r#"[backup]
target = "s3://{bucket}/{prefix}"
interval = "1h"
keep = 3
[backup.s3]
endpoint = "{endpoint}"
region = "us-east-1"
allow_http = true
access_key_id = "{ACCESS_KEY_ID}"
secret_access_key = {{ env = "{secret_variable}" }}
"#,
            bucket = self.bucket,
            endpoint = self.endpoint,
        )
    }

    /// Replaces the object `key` of the bucket with `body` (a test damaging a backup), as an
    /// S3 client does: the server takes overwrites from signed requests only.
    pub fn put_object(&self, key: &str, body: &[u8]) {
        use object_store::ObjectStoreExt;
        let client = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_endpoint(&self.endpoint)
            .with_region("us-east-1")
            .with_allow_http(true)
            .with_access_key_id(ACCESS_KEY_ID)
            .with_secret_access_key(SECRET_ACCESS_KEY)
            .build()
            .expect("an S3 client of the test server");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime
            .block_on(client.put(
                &object_store::path::Path::from(key),
                object_store::PutPayload::from(body.to_vec()),
            ))
            .expect("the S3 server takes the object");
    }

    /// The keys of the bucket under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut response = ureq::get(&format!(
            "{}/{}?list-type=2&prefix={prefix}&max-keys=1000",
            self.endpoint, self.bucket
        ))
        .call()
        .expect("the S3 server answers");
        let body = response.body_mut().read_to_string().expect("a listing");
        body.split("<Key>")
            .skip(1)
            .filter_map(|part| part.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }
}
