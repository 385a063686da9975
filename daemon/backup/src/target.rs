//! Where backups go: a directory or a bucket (and prefix) of an S3-compatible object store.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

use crate::error::{Error, Result};

/// How to reach an S3-compatible object store. Unset values come from the usual `AWS_*`
/// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
/// `AWS_ENDPOINT`, ...), as every S3 client reads them.
#[derive(Clone, Default)]
pub struct S3Settings {
    /// The server's URL, for a store other than AWS (`http://minio:9000`).
    pub endpoint: Option<String>,
    /// The region (`us-east-1` when nothing says otherwise).
    pub region: Option<String>,
    /// Whether an `http://` endpoint is allowed (TLS otherwise).
    pub allow_http: bool,
    /// The access key id.
    pub access_key_id: Option<String>,
    /// The secret access key; never shown.
    pub secret_access_key: Option<String>,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// An opened backup target.
#[derive(Clone, Debug)]
pub struct Target {
    objects: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    shown: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Target {
    /// Opens `location`: `s3://bucket/prefix` for an object store, anything else (a path, or
    /// `file:///path`) for a directory, created (private to the user) if missing.
    pub fn open(location: &str, s3: &S3Settings) -> Result<Target> {
        let location = location.trim();
        if let Some(rest) = location.strip_prefix("s3://") {
            return Target::open_s3(location, rest, s3);
        }
        if let Some((scheme, _)) = location.split_once("://") {
            if scheme != "file" {
                return Err(Error::Target {
                    target: location.to_owned(),
                    problem: format!(
                        "`{scheme}://` is not a kind of target tandem writes to: give a directory or s3://bucket/prefix"
                    ),
                });
            }
        }
        let directory = PathBuf::from(location.strip_prefix("file://").unwrap_or(location));
        if directory.as_os_str().is_empty() {
            return Err(Error::Target {
                target: location.to_owned(),
                problem: "empty: give a directory or s3://bucket/prefix".to_owned(),
            });
        }
        Target::open_directory(&directory)
    }

    fn open_directory(directory: &Path) -> Result<Target> {
        use std::os::unix::fs::DirBuilderExt;
        if !directory.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(directory)
                .map_err(|source| Error::Io {
                    operation: "cannot create the backup directory",
                    path: directory.to_owned(),
                    source,
                })?;
        }
        let objects =
            LocalFileSystem::new_with_prefix(directory).map_err(|source| Error::Target {
                target: directory.display().to_string(),
                problem: format!("cannot be used as a directory of backups: {source}"),
            })?;
        Ok(Target {
            objects: Arc::new(objects),
            prefix: ObjectPath::default(),
            shown: directory.display().to_string(),
        })
    }

    fn open_s3(location: &str, rest: &str, s3: &S3Settings) -> Result<Target> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Target {
                target: location.to_owned(),
                problem: "names no bucket: give s3://bucket/prefix".to_owned(),
            });
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = &s3.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &s3.region {
            builder = builder.with_region(region);
        }
        if s3.allow_http {
            builder = builder.with_allow_http(true);
        }
        if let Some(key) = &s3.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &s3.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let objects = builder.build().map_err(|source| Error::Target {
            target: location.to_owned(),
            problem: format!(
                "cannot be reached as configured: {source}; check `backup.s3` (endpoint, region, allow_http for an http:// endpoint) and the credentials"
            ),
        })?;
        let prefix =
            ObjectPath::parse(prefix.trim_matches('/')).map_err(|source| Error::Target {
                target: location.to_owned(),
                problem: format!("its prefix is not a valid object path: {source}"),
            })?;
        let shown = format!("s3://{bucket}/{}", prefix.as_ref());
        Ok(Target {
            objects: Arc::new(objects),
            prefix,
            shown,
        })
    }

    pub(crate) fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.objects
    }

    /// The object holding the file of content `sha256`.
    pub(crate) fn object(&self, sha256: &str) -> ObjectPath {
        self.prefix.clone().join("objects").join(sha256)
    }

    pub(crate) fn objects_folder(&self) -> ObjectPath {
        self.prefix.clone().join("objects")
    }

    pub(crate) fn backups_folder(&self) -> ObjectPath {
        self.prefix.clone().join("backups")
    }

    pub(crate) fn manifest(&self, id: &str) -> ObjectPath {
        self.backups_folder().join(id).join("manifest.json")
    }
}
