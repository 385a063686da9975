//! `[store]` and `[api]`: where state lives, where the API listens, its tokens and limits.

use super::*;

/// `[store]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// The RocksDB directory.
    pub path: PathBuf,
    /// Block cache size in MiB.
    #[serde(default = "default_cache_mib")]
    pub cache_mib: usize,
    /// fsync every batch (survives machine crashes without re-reading Kafka).
    #[serde(default)]
    pub sync_writes: bool,
    /// Ingestion pauses while the store's disk has less free space than this, in MiB.
    #[serde(default = "default_min_free_mib")]
    pub min_free_mib: u64,
}

/// `[api]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiConfig {
    /// Listen address of the HTTP API.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bearer token for changes (and reads). Prefer `admin_token_file`.
    #[serde(default, skip_serializing)]
    pub admin_token: Option<String>,
    /// A file holding the admin token (its trailing newline is ignored).
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// Bearer token every read must carry, when set. Prefer `read_token_file`.
    #[serde(default, skip_serializing)]
    pub read_token: Option<String>,
    /// A file holding the read token.
    #[serde(default)]
    pub read_token_file: Option<PathBuf>,
    /// Tokens of one person or tool each (`[[api.tokens]]`): the audit names who asked.
    #[serde(default)]
    pub tokens: Vec<NamedTokenConfig>,
    /// A connection must send a complete request header within this time (the first request
    /// and each next one on a kept-alive connection), or it is closed.
    #[serde(
        default = "default_header_read_timeout",
        with = "crate::config::duration"
    )]
    pub header_read_timeout: Duration,
    /// Connections open at once; past it a connection is answered 503 and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one IP address; past it, likewise.
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
            admin_token: None,
            admin_token_file: None,
            read_token: None,
            read_token_file: None,
            tokens: Vec::new(),
            header_read_timeout: default_header_read_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_address: default_max_connections_per_address(),
        }
    }
}

/// One `[[api.tokens]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedTokenConfig {
    /// Who holds it: letters, digits, `.`, `_`, `-` (the audit's `token`).
    pub name: String,
    /// `admin` (changes and reads) or `read`.
    pub role: TokenRole,
    /// The token. Prefer `token_file`.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// A file holding the token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// What a named token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    /// Changes and reads.
    Admin,
    /// Reads.
    Read,
}

impl ApiConfig {
    /// The listener's limits.
    pub fn connection_limits(&self) -> tandem_api::serve::ConnectionLimits {
        tandem_api::serve::ConnectionLimits {
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
        }
    }
}

impl ApiConfig {
    /// The configured tokens, read from their files where given.
    pub fn tokens(&self) -> Result<AccessTokens, String> {
        // `key` names the inline key; its file is `<key>_file`.
        let token = |key: &str, inline: &Option<String>, file: &Option<PathBuf>| {
            let text = match (inline, file) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "keys `{key}` and `{key}_file` are both set: keep one"
                    ))
                }
                (Some(text), None) => text.clone(),
                (None, Some(path)) => std::fs::read_to_string(path).map_err(|error| {
                    format!("key `{key}_file`: cannot read {}: {error}", path.display())
                })?,
                (None, None) => return Ok(None),
            };
            match Token::new(&text) {
                Some(token) if text.trim().len() >= 16 => Ok(Some(token)),
                _ => Err(format!("key `{key}`: a token needs at least 16 characters (e.g. `openssl rand -hex 32`)")),
            }
        };
        let mut tokens = AccessTokens {
            admin: token("api.admin_token", &self.admin_token, &self.admin_token_file)?,
            read: token("api.read_token", &self.read_token, &self.read_token_file)?,
            named: Vec::new(),
        };
        for (index, entry) in self.tokens.iter().enumerate() {
            let key = format!("api.tokens[{index}]");
            let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if entry.name.is_empty() || entry.name.len() > 64 || !entry.name.chars().all(plain) {
                return Err(format!("key `{key}.name`: `{}` is not a plain name: use letters, digits, `.`, `_` or `-` (at most 64)", entry.name.escape_debug()));
            }
            if ["admin", "read", "none"].contains(&entry.name.as_str()) {
                return Err(format!("key `{key}.name`: `{}` is the name of a shared token: give the person's or tool's name", entry.name));
            }
            if tokens.named.iter().any(|named| named.name == entry.name) {
                return Err(format!("key `{key}.name`: `{}` is given twice", entry.name));
            }
            let Some(value) = token(&format!("{key}.token"), &entry.token, &entry.token_file)?
            else {
                return Err(format!("key `{key}`: give `token_file` (or `token`)"));
            };
            tokens.named.push(NamedToken {
                name: entry.name.clone(),
                admin: entry.role == TokenRole::Admin,
                token: value,
            });
        }
        // A named token equal to another token would make the audit name the wrong holder
        // (the shared admin and read tokens may be equal: both name a role, not a person).
        let shared: Vec<&str> = tokens
            .admin
            .iter()
            .chain(&tokens.read)
            .map(Token::reveal)
            .collect();
        for (index, named) in tokens.named.iter().enumerate() {
            let earlier = tokens.named[..index]
                .iter()
                .map(|other| other.token.reveal());
            if shared
                .iter()
                .copied()
                .chain(earlier)
                .any(|other| other == named.token.reveal())
            {
                return Err(format!("key `api.tokens[{index}]`: its token is configured twice (for `{}` and another); give each person or tool a token of its own", named.name));
            }
        }
        Ok(tokens)
    }

    /// The token files every user of the machine can read: each a warning naming the key,
    /// the file, its mode and the fix.
    pub fn loose_token_files(&self) -> Vec<String> {
        let named =
            self.tokens.iter().enumerate().map(|(index, entry)| {
                (format!("api.tokens[{index}].token_file"), &entry.token_file)
            });
        [
            ("api.admin_token_file".to_owned(), &self.admin_token_file),
            ("api.read_token_file".to_owned(), &self.read_token_file),
        ]
        .into_iter()
        .chain(named)
        .filter_map(|(key, file)| {
            let path = file.as_ref()?;
            let mode = loose_mode(path)?;
            Some(format!(
                "key `{key}`: every user of the machine can read {} (mode {mode:o}): run `chmod 600 {}`",
                path.display(),
                path.display()
            ))
        })
        .collect()
    }

    /// The token the CLI sends: the admin token when configured, else the read token.
    pub fn client_token(&self) -> Option<String> {
        let tokens = self.tokens().ok()?;
        let named_admin = tokens
            .named
            .iter()
            .find(|named| named.admin)
            .map(|named| named.token.clone());
        let named_any = tokens.named.first().map(|named| named.token.clone());
        tokens
            .admin
            .or(named_admin)
            .or(tokens.read)
            .or(named_any)
            .map(|token| token.reveal().to_owned())
    }
}
