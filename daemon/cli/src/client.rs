//! The CLI's client of a running daemon's HTTP API.

use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::de::DeserializeOwned;

/// Talks to one daemon.
pub struct ApiClient {
    base_url: String,
    agent: ureq::Agent,
    token: Option<String>,
}

impl ApiClient {
    /// A client of the daemon at `base_url` (`http://host:port`).
    pub fn new(base_url: &str) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build();
        ApiClient {
            base_url: base_url.trim_end_matches('/').to_owned(),
            agent: ureq::Agent::new_with_config(config),
            token: None,
        }
    }

    /// Waits up to `timeout` for an answer (a backup may take longer than the usual minute).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build();
        self.agent = ureq::Agent::new_with_config(config);
        self
    }

    /// Sends `token` as the bearer token of every request.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// The daemon's base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A request of `path` with the query's parameters, encoded by the HTTP client; a
    /// parameter without a value is left out.
    fn get_request(
        &self,
        path: &str,
        query: &[(&str, Option<&str>)],
    ) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let mut request = self.agent.get(format!("{}{path}", self.base_url));
        for (name, value) in query {
            if let Some(value) = value {
                request = request.query(*name, *value);
            }
        }
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        request
    }

    /// GETs `path` with `query` and decodes the JSON answer; API errors become readable
    /// errors.
    pub fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, Option<&str>)],
    ) -> anyhow::Result<T> {
        let request = self.get_request(path, query);
        let mut response = request.call().map_err(|error| {
            anyhow!(
                "cannot reach tandem at {}: {error}; is the daemon running (`tandem run --config tandem.toml`), and is --url or api.listen right?",
                self.base_url
            )
        })?;
        let status = response.status();
        if status.is_success() {
            return response
                .body_mut()
                .read_json()
                .with_context(|| format!("unexpected answer from {}{path}", self.base_url));
        }
        Err(refusal(&mut response))
    }

    /// GETs `path` with `query` and copies the answer's body to `out` as it arrives.
    pub fn copy_to(
        &self,
        path: &str,
        query: &[(&str, Option<&str>)],
        out: &mut impl std::io::Write,
    ) -> anyhow::Result<u64> {
        let request = self.get_request(path, query);
        let mut response = request
            .call()
            .map_err(|error| anyhow!("cannot reach tandem at {}: {error}", self.base_url))?;
        if !response.status().is_success() {
            return Err(refusal(&mut response));
        }
        let mut reader = response.body_mut().as_reader();
        std::io::copy(&mut reader, out).context("copying the answer")
    }

    /// POSTs a JSON body and returns the status and the JSON answer (errors included: a
    /// refused cutover step answers 409 with its reasons).
    pub fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let mut request = self.agent.post(format!("{}{path}", self.base_url));
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let mut response = request.send_json(body).map_err(|error| {
            anyhow!(
                "cannot reach tandem at {}: {error}; is the daemon running, and is --url or api.listen right?",
                self.base_url
            )
        })?;
        let status = response.status().as_u16();
        let answer = response.body_mut().read_json().unwrap_or_default();
        Ok((status, answer))
    }
}

/// The API's error answer as an error: what went wrong, the status, what to do.
fn refusal(response: &mut ureq::http::Response<ureq::Body>) -> anyhow::Error {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.body_mut().read_json().unwrap_or_default();
    anyhow!(
        "{} (HTTP {status}); {}",
        body["error"].as_str().unwrap_or("request failed"),
        body["hint"].as_str().unwrap_or("")
    )
}

/// One path segment (an entity, a join key), percent-encoded: every byte but the unreserved
/// characters of RFC 3986, so a `/` or `?` in a join key stays part of it.
pub fn path_segment(text: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, RESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_key_stays_one_path_segment() {
        assert_eq!(path_segment("L-1.a_b~"), "L-1.a_b~");
        assert_eq!(path_segment("a/b c?d#é"), "a%2Fb%20c%3Fd%23%C3%A9");
    }
}
