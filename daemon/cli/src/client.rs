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

    /// Sends `token` as the bearer token of every request.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// The daemon's base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// GETs `path_and_query` and decodes the JSON answer; API errors become readable errors.
    pub fn get<T: DeserializeOwned>(&self, path_and_query: &str) -> anyhow::Result<T> {
        let url = format!("{}{path_and_query}", self.base_url);
        let mut request = self.agent.get(&url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
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
                .with_context(|| format!("unexpected answer from {url}"));
        }
        let body: serde_json::Value = response.body_mut().read_json().unwrap_or_default();
        let message = body["error"].as_str().unwrap_or("request failed");
        let hint = body["hint"].as_str().unwrap_or("");
        Err(anyhow!("{message} (HTTP {}); {hint}", status.as_u16()))
    }
}

impl ApiClient {
    /// GETs `path_and_query` and copies the answer's body to `out` as it arrives.
    pub fn copy_to(
        &self,
        path_and_query: &str,
        out: &mut impl std::io::Write,
    ) -> anyhow::Result<u64> {
        let url = format!("{}{path_and_query}", self.base_url);
        let mut request = self.agent.get(&url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        let mut response = request
            .call()
            .map_err(|error| anyhow!("cannot reach tandem at {}: {error}", self.base_url))?;
        let status = response.status();
        if !status.is_success() {
            let body: serde_json::Value = response.body_mut().read_json().unwrap_or_default();
            return Err(anyhow!(
                "{} (HTTP {}); {}",
                body["error"].as_str().unwrap_or("request failed"),
                status.as_u16(),
                body["hint"].as_str().unwrap_or("")
            ));
        }
        let mut reader = response.body_mut().as_reader();
        std::io::copy(&mut reader, out).context("copying the answer")
    }

    /// POSTs a JSON body and returns the status and the JSON answer (errors included: a
    /// refused cutover step answers 409 with its reasons).
    pub fn post(
        &self,
        path_and_query: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let url = format!("{}{path_and_query}", self.base_url);
        let mut request = self.agent.post(&url);
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

/// Percent-encodes one path segment or query value.
pub fn encode_component(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                encoded.push(char::from(byte))
            }
            other => encoded.push_str(&format!("%{other:02X}")),
        }
    }
    encoded
}
