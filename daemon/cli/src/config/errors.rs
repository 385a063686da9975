//! Configuration errors in words a person can act on: the key, never a secret's value.

/// A TOML syntax error by line and column, without quoting the line: it may hold a secret.
pub(super) fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let position = error.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.chars().rev().take_while(|c| *c != '\n').count() + 1;
        (line, column)
    });
    let message = error.message().trim_end();
    match position {
        Some((line, column)) => format!(
            "TOML syntax error at line {line}, column {column}: {message} (the line is not shown, as it may hold a secret)"
        ),
        None => format!("TOML syntax error: {message}"),
    }
}

/// Whether a configuration key holds a secret, so that no error shows its value.
pub(super) fn is_secret_key(path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path);
    ["token", "password", "secret"]
        .iter()
        .any(|word| last.contains(word))
}

/// Names the key of a deserialization error: `kafka.brokers`, not just "missing field".
pub(super) fn describe_deserialize_error(
    error: &serde_path_to_error::Error<config::ConfigError>,
) -> String {
    let path = error.path().to_string();
    let mut inner = error.inner().to_string();
    if is_secret_key(&path) && (inner.contains("invalid type") || inner.contains("invalid value")) {
        return format!("key `{path}` has a value of the wrong kind (not shown, as it may be a secret): give a string");
    }
    if let Some(number) = between(
        &inner,
        "invalid value: string \"",
        "\", expected a duration",
    )
    .filter(|number| !number.is_empty() && number.chars().all(|c| c.is_ascii_digit() || c == '.'))
    {
        return format!("key `{path}`: {number} has no unit: write a duration such as \"{number}s\" or \"{number}m\"");
    }
    // The config crate appends " for key `...`" in its own spelling; the key is named below.
    if let Some(index) = inner.find(" for key `") {
        inner.truncate(index);
    }
    if let Some(key) = between(&inner, "missing configuration field \"", "\"") {
        return format!("required key `{key}` is missing");
    }
    if let Some(field) = between(&inner, "missing field `", "`") {
        let parent = if path == "." {
            String::new()
        } else {
            format!("{path}.")
        };
        return format!("required key `{parent}{field}` is missing");
    }
    if inner.starts_with("unknown field `") {
        let known = inner
            .split_once("expected ")
            .map(|(_, rest)| format!(" (known keys here: {})", rest.trim_start_matches("one of ")))
            .unwrap_or_default();
        return format!("unknown key `{path}`{known}");
    }
    if inner.ends_with("expected a duration") {
        inner.push_str(" (write a duration such as \"5m\", \"90s\" or \"1h 30m\")");
    }
    if path == "." {
        inner
    } else {
        format!("key `{path}`: {inner}")
    }
}

pub(super) fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let after = &text[text.find(start)? + start.len()..];
    Some(&after[..after.find(end)?])
}
