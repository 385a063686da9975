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

/// Names the key of a deserialization error, from the error's own kind: a missing key, a
/// value of the wrong type, or a message written whole by the type that refused the value (a
/// duration, an actor, an entity's rule), passed on as it is. A secret key's value is never
/// shown.
pub(super) fn describe_deserialize_error(path: &str, error: &config::ConfigError) -> String {
    match error {
        config::ConfigError::At { error, .. } => describe_deserialize_error(path, error),
        // The config crate names the whole key; serde, only the field of its table.
        config::ConfigError::NotFound(key) if path == "." || key.starts_with(&format!("{path}.")) => {
            format!("required key `{key}` is missing")
        }
        config::ConfigError::NotFound(field) => {
            format!("required key `{}` is missing", child(path, field))
        }
        _ if is_secret_key(path) => format!(
            "key `{path}` has a value of the wrong kind (not shown, as it may be a secret): give a string"
        ),
        config::ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!("key `{path}`: expected {expected}, found {unexpected}"),
        other if path == "." => other.to_string(),
        other => format!("key `{path}`: {other}"),
    }
}

/// `parent.key`, or `key` at the top.
fn child(parent: &str, key: &str) -> String {
    if parent == "." || parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// The dotted key of a path serde_ignored reports (`kafka.groupid`, `entities[0].naem`).
pub(super) fn key_path(path: &serde_ignored::Path<'_>) -> String {
    match path {
        serde_ignored::Path::Root => String::new(),
        serde_ignored::Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        serde_ignored::Path::Map { parent, key } => child(&key_path(parent), key),
        serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent } => key_path(parent),
    }
}

/// A key no setting takes, with the keys its table has (read from the configuration itself,
/// as it serializes).
pub(super) fn unknown_key(key: &str, config: &super::Config) -> String {
    let parent = key.rsplit_once('.').map_or("", |(parent, _)| parent);
    let known = serde_json::to_value(config).ok().and_then(|value| {
        let mut node = value;
        for part in parent.split('.').filter(|part| !part.is_empty()) {
            let (name, index) = match part.split_once('[') {
                Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (part, None),
            };
            node = node.get(name)?.clone();
            if let Some(index) = index {
                node = node.get(index)?.clone();
            }
        }
        let keys: Vec<String> = node.as_object()?.keys().cloned().collect();
        (!keys.is_empty()).then(|| keys.join(", "))
    });
    match known {
        Some(keys) => format!("unknown key `{key}` (known keys here: {keys})"),
        None => format!("unknown key `{key}`: ops/tandem.example.toml documents every key"),
    }
}
