//! `[backup]`: where the store's backups go, how often, how many are kept.

use super::*;

/// `[backup]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackupConfig {
    /// A directory, or `s3://bucket/prefix` of an S3-compatible object store.
    pub target: String,
    /// How often a backup is taken (the first one at start).
    #[serde(default = "default_backup_interval", with = "crate::config::duration")]
    pub interval: Duration,
    /// How many backups are kept; older ones, and the files only they used, are removed.
    #[serde(default = "default_backup_keep")]
    pub keep: usize,
    /// How to reach an S3-compatible store; unset values come from the `AWS_*` variables.
    #[serde(default)]
    pub s3: S3Config,
}

/// `[backup.s3]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct S3Config {
    /// The server's URL, for a store other than AWS S3 (`http://minio:9000`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The region.
    #[serde(default)]
    pub region: Option<String>,
    /// Whether an `http://` endpoint may be used.
    #[serde(default)]
    pub allow_http: bool,
    /// The access key id.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// The secret access key, read at start from a file (`{ file = "/run/secrets/s3" }`) or an
    /// environment variable (`{ env = "S3_SECRET" }`); never printed.
    #[serde(default)]
    pub secret_access_key: Option<SecretSource>,
    /// Its value, read by [`Config::load`].
    #[serde(skip)]
    pub secret: Option<Secret>,
}

fn default_backup_interval() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_backup_keep() -> usize {
    96
}

impl BackupConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.target.trim().is_empty() {
            return Err("key `backup.target` is empty: give a directory or s3://bucket/prefix (remove [backup] to take no backups)".to_owned());
        }
        if self.interval < Duration::from_secs(1) {
            return Err("key `backup.interval` must be at least 1s, e.g. \"15m\"".to_owned());
        }
        if self.keep == 0 {
            return Err("key `backup.keep` must be at least 1".to_owned());
        }
        Ok(())
    }

    pub(super) fn read_secret(
        &mut self,
        variable: impl Fn(&str) -> Option<String>,
    ) -> Result<(), String> {
        if let Some(source) = &self.s3.secret_access_key {
            self.s3.secret = Some(source.read("backup.s3.secret_access_key", variable)?);
        }
        Ok(())
    }

    /// Opens the target; an error names the key.
    pub fn open_target(&self) -> Result<tandem_backup::Target, String> {
        tandem_backup::Target::open(&self.target, &self.s3.settings())
            .map_err(|error| format!("key `backup.target`: {error}"))
    }
}

impl S3Config {
    /// The settings the object store client takes.
    pub fn settings(&self) -> tandem_backup::S3Settings {
        tandem_backup::S3Settings {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            allow_http: self.allow_http,
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self
                .secret
                .as_ref()
                .map(|secret| secret.reveal().to_owned()),
        }
    }
}
