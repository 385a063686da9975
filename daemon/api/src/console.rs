//! The operator console: a page and its script and style, embedded in the binary and served at
//! `/`. They hold no data and load nothing from elsewhere: the script reads the API with the
//! token the operator gives it, so the console shows exactly what the API answers, to whom the
//! API answers it.

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const PAGE: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// Only the console's own files, and only the API as a source of data: text from the CRMs
/// can never bring in a script, a frame or a form that posts elsewhere.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self' blob:; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The paths the console answers, open without a token: they hold no data.
pub(crate) const PATHS: [&str; 3] = ["/", "/console/console.js", "/console/console.css"];

/// The console's routes.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            PATHS[0],
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            PATHS[1],
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            PATHS[2],
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CONTENT_SECURITY_POLICY, POLICY),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (X_FRAME_OPTIONS, "DENY"),
            (REFERRER_POLICY, "no-referrer"),
            // A new release's console is taken at once.
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
