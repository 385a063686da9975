//! Request ids: every answer carries `X-Request-Id`, the caller's own if it sent a usable one
//! (up to 64 letters, digits, `-`, `_` and `.`), else a new one. The request's log lines carry
//! it in their span, and a change keeps it with the caller in its history.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header, in both directions.
pub(crate) const HEADER: &str = "x-request-id";

/// The id of the request being answered, in its extensions.
#[derive(Clone, Debug)]
pub(crate) struct RequestId(pub(crate) String);

/// Gives the request its id, answers with it, and logs within its span.
pub(crate) async fn assign(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|offered| usable(offered))
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned);
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", id = %id);
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}

/// Whether a caller's id can be kept as it is: short, and plain enough for any log or header.
fn usable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::usable;

    #[test]
    fn only_short_plain_ids_are_kept() {
        assert!(usable("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(usable("deploy-2026.12.07_01"));
        for refused in [
            "",
            "a b",
            "x\n[INFO] forged",
            "id\u{1b}[31m",
            &"a".repeat(65),
        ] {
            assert!(!usable(refused), "{refused:?}");
        }
    }
}
