//! Untrusted text in exports a person opens in a spreadsheet.

use std::borrow::Cow;

/// A CSV cell that a spreadsheet shows as text, never runs: a cell beginning with `=`, `+`,
/// `-`, `@`, a tab or a carriage return is read as a formula by spreadsheets, so it gets a
/// leading `'`. A number (`-5`, `+1.5`) and a lone sign (the `-` that stands for "none")
/// stay as they are.
pub fn spreadsheet_safe(text: &str) -> Cow<'_, str> {
    match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r')
            if text.len() > 1 && text.parse::<f64>().is_err() =>
        {
            Cow::Owned(format!("'{text}"))
        }
        _ => Cow::Borrowed(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_become_text_and_numbers_stay_numbers() {
        for (cell, shown) in [
            (
                "=HYPERLINK(\"http://x\",\"y\")",
                "'=HYPERLINK(\"http://x\",\"y\")",
            ),
            ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
            ("-2+3+cmd", "'-2+3+cmd"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\t=1", "'\t=1"),
            ("\r=1", "'\r=1"),
            ("-5", "-5"),
            ("-", "-"),
            ("+1.5", "+1.5"),
            ("Acme", "Acme"),
            ("", ""),
        ] {
            assert_eq!(spreadsheet_safe(cell), shown, "{cell:?}");
        }
    }
}
