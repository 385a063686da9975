//! Bearer tokens: reads need a token when a read token (shared or named) is configured,
//! changes always need an admin token (the shared one or a named one); a named token's name
//! is who the audit says asked. Tokens are compared in constant time and never logged; every refusal is
//! counted, and logged with the caller's address at most every 10 s (with the number held
//! back since).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{IntCounterVec, Opts, Registry};
use subtle::ConstantTimeEq;
use tracing::warn;

use crate::{ApiContext, ApiError};
use tandem_core::cutover::Caller;
use tandem_ingest::quiet::Quieted;

use crate::request_id::RequestId;

/// A token, shown as `***` in logs and debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A token from its text; surrounding whitespace (a file's trailing newline) is dropped.
    pub fn new(text: &str) -> Option<Token> {
        let text = text.trim();
        (!text.is_empty()).then(|| Token(text.to_owned()))
    }

    /// The token itself, to send it (never to log it).
    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// Compares in time that depends on the configured token's length only: neither how many
    /// bytes of the offer are right nor whether its length is shows in the timing.
    fn matches(&self, offered: &str) -> bool {
        let expected = self.0.as_bytes();
        let offered = offered.as_bytes();
        let mut same = (expected.len() as u64).ct_eq(&(offered.len() as u64));
        for (index, byte) in expected.iter().enumerate() {
            let other = match offered.len() {
                0 => 0,
                length => offered[index % length],
            };
            same &= byte.ct_eq(&other);
        }
        bool::from(same)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("***")
    }
}

/// The configured tokens.
#[derive(Clone, Debug, Default)]
pub struct AccessTokens {
    /// Needed for changes (and accepted for reads).
    pub admin: Option<Token>,
    /// Needed for reads when set.
    pub read: Option<Token>,
    /// Tokens given to one person or tool each: the audit names who asked by them.
    pub named: Vec<NamedToken>,
}

/// A token of one person or tool (`[[api.tokens]]`).
#[derive(Clone, Debug)]
pub struct NamedToken {
    /// Who holds it, as the audit says (`ann`, `grafana`).
    pub name: String,
    /// Whether it may make changes (the admin role), or only read.
    pub admin: bool,
    /// The token.
    pub token: Token,
}

impl AccessTokens {
    /// Who offers `offered`, and whether they may make changes. Every configured token is
    /// compared (in constant time each), whichever matches.
    fn identify(&self, offered: &str) -> Option<(&str, bool)> {
        let mut found = None;
        let shared = [("admin", true, &self.admin), ("read", false, &self.read)];
        for (name, admin, token) in shared {
            if token.as_ref().is_some_and(|token| token.matches(offered)) && found.is_none() {
                found = Some((name, admin));
            }
        }
        for named in &self.named {
            if named.token.matches(offered) && found.is_none() {
                found = Some((named.name.as_str(), named.admin));
            }
        }
        found
    }

    /// Whether any token may make changes.
    fn any_admin(&self) -> bool {
        self.admin.is_some() || self.named.iter().any(|named| named.admin)
    }

    /// Whether reads need a token: a read token (shared or named) is configured.
    fn reads_need_a_token(&self) -> bool {
        self.read.is_some() || self.named.iter().any(|named| !named.admin)
    }
}

/// Refusals per reason.
#[derive(Clone)]
pub(crate) struct AuthMetrics {
    failures: IntCounterVec,
    /// A refusal is logged at most every 10 s: a client retrying with a wrong token must not
    /// flood the log.
    refusals: Arc<Quieted>,
}

impl AuthMetrics {
    pub(crate) fn register(registry: &Registry) -> prometheus::Result<Self> {
        let failures = IntCounterVec::new(
            Opts::new(
                "tandem_auth_failures_total",
                "Requests refused for a missing or wrong bearer token, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(failures.clone()))?;
        Ok(AuthMetrics {
            failures,
            refusals: Arc::new(Quieted::new(std::time::Duration::from_secs(10))),
        })
    }
}

/// Whether a path is open without a token: liveness and readiness probes, and the console's
/// page and files (they hold no data; the console reads the API with the operator's token).
fn is_open(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz") || crate::console::PATHS.contains(&path)
}

/// Checks the bearer token of every request but the probes.
pub(crate) async fn require_token(
    State(context): State<Arc<ApiContext>>,
    request: Request,
    next: Next,
) -> Response {
    let caller = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.to_string())
        .unwrap_or_else(|| "unknown".to_owned());
    let path = request.uri().path().to_owned();
    if is_open(&path) {
        return next.run(request).await;
    }
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD);
    let tokens = &context.tokens;
    let offered = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let who = offered.and_then(|offered| tokens.identify(offered));
    let refusal = if changes {
        match (offered, who) {
            _ if !tokens.any_admin() => Some((
                "no_admin_token",
                StatusCode::FORBIDDEN,
                "changes need an admin token, and none is configured: set api.admin_token (or api.admin_token_file), or give a [[api.tokens]] entry role = \"admin\"",
            )),
            (None, _) => Some((
                "missing",
                StatusCode::UNAUTHORIZED,
                "send `Authorization: Bearer <admin token>`",
            )),
            (Some(_), Some((_, true))) => None,
            (Some(_), _) => Some((
                "wrong",
                StatusCode::UNAUTHORIZED,
                "the token is not an admin token (api.admin_token, or an [[api.tokens]] entry with role = \"admin\")",
            )),
        }
    } else if tokens.reads_need_a_token() {
        match (offered, who) {
            (None, _) => Some((
                "missing",
                StatusCode::UNAUTHORIZED,
                "send `Authorization: Bearer <token>`: the read token (api.read_token), an admin token or a token of [[api.tokens]]",
            )),
            (Some(_), None) => Some((
                "wrong",
                StatusCode::UNAUTHORIZED,
                "the token is none of the configured tokens",
            )),
            (Some(_), Some(_)) => None,
        }
    } else {
        None
    };
    // Who presented which token, for the audit of what the request does.
    let presented = who.map_or_else(|| "none".to_owned(), |(name, _)| name.to_owned());
    match refusal {
        None => {
            let request_id = request
                .extensions()
                .get::<RequestId>()
                .map(|id| id.0.clone())
                .unwrap_or_default();
            let mut request = request;
            request.extensions_mut().insert(Caller {
                token: presented,
                address: caller,
                request_id,
            });
            next.run(request).await
        }
        Some((reason, status, hint)) => {
            context
                .auth_metrics
                .failures
                .with_label_values(&[reason])
                .inc();
            let method = request.method().clone();
            context.auth_metrics.refusals.warn(|suppressed| {
                warn!(%caller, %method, %path, reason, suppressed, "request refused: no valid bearer token (suppressed: refusals not logged since the last one; all are counted in tandem_auth_failures_total)")
            });
            let mut response = ApiError::new(status, "not authorized", hint).into_response();
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Token;

    #[test]
    fn only_the_whole_token_matches() {
        let token = Token::new("s3cret-admin-token\n").unwrap();
        assert!(token.matches("s3cret-admin-token"));
        for wrong in [
            "",
            "s",
            "s3cret-admin-toke",
            "s3cret-admin-token!",
            "s3cret-admin-tokens3cret-admin-token",
            "S3cret-admin-token",
        ] {
            assert!(!token.matches(wrong), "{wrong:?}");
        }
    }
}
