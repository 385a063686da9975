//! Log output through `tracing`: text or JSON lines on stderr, filtered by level.

use std::borrow::Cow;
use std::fmt::Write as _;

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Text log fields as `name=value` after the message, with control characters escaped: a CRM
/// value, an id or a reason that carries a newline or a terminal escape stays data on its own
/// line, never a forged log line or a recoloured terminal. (JSON lines escape them anyway.)
fn escaped_fields() -> impl for<'writer> FormatFields<'writer> + Send + Sync + 'static {
    tracing_subscriber::fmt::format::debug_fn(|writer: &mut Writer<'_>, field, value| {
        let text = format!("{value:?}");
        let text = escape_controls(&text);
        if field.name() == "message" {
            write!(writer, "{text}")
        } else {
            write!(writer, "{}={text}", field.name())
        }
    })
    .delimited(" ")
}

/// `text` with every control character written out (`\n`, `\r`, `\t`, `\u{1b}`).
fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for character in text.chars() {
        match character {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            other if other.is_control() => {
                let _ = write!(escaped, "\\u{{{:x}}}", u32::from(other));
            }
            other => escaped.push(other),
        }
    }
    Cow::Owned(escaped)
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`.
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: escape codes in a file or a log collector
    // are noise that breaks searching for `key=value`.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.fmt_fields(escaped_fields()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second initialisation (tests, the demo's nested daemon) keeps the first subscriber.
    drop(result);
}

/// Installs the global subscriber writing text lines to `file` (the demo keeps its terminal
/// for the report and logs there).
pub fn init_to_file(level: &str, file: std::fs::File) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let result = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .fmt_fields(escaped_fields())
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    drop(result);
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn untrusted_text_cannot_forge_a_log_line_or_colour_the_terminal() {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let buffer = Arc::clone(&buffer);
            move || BufferWriter(Arc::clone(&buffer))
        };
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(escaped_fields())
            .with_writer(writer)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let reason =
                "typo\n2026-12-07T00:00:00Z  INFO cutover: rollback approved \u{1b}[31mred";
            tracing::info!(reason = %reason, join_key = ?"L1\r", attempt = 2, "cutover step refused");
        });
        let output = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        assert_eq!(output.lines().count(), 1, "{output:?}");
        assert!(!output.contains('\u{1b}'), "{output:?}");
        assert!(
            output.contains(
                "cutover step refused reason=typo\\n2026-12-07T00:00:00Z  INFO cutover: rollback approved \\u{1b}[31mred join_key=\"L1\\r\" attempt=2"
            ),
            "{output:?}"
        );
    }

    struct BufferWriter(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for BufferWriter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
