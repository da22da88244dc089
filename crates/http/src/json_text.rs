//! Reading a JSON body's bytes before it is parsed: how deep it nests (refused as
//! such, however deep, before the parser recurses into it) and whether every number
//! in it can be kept exactly (refused, never silently rounded).

/// What a look at a JSON text's bytes finds before it is parsed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scan {
    /// The deepest nesting of objects and arrays (a scalar is 0).
    pub depth: usize,
    /// The first number the parser would change: an integer outside 64 bits, or a
    /// decimal with more precision than a double holds. Everything in a body is
    /// passed through unchanged or refused, never silently rounded.
    pub inexact_number: Option<String>,
}

/// Reads a JSON text's bytes once: its nesting (refused as such, however deep,
/// before the parser recurses into it) and any number that could not be kept exactly.
pub fn scan(text: &[u8]) -> Scan {
    let mut found = Scan::default();
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let mut i = 0;
    while i < text.len() {
        let byte = text[i];
        i += 1;
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                found.depth = found.depth.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = i - 1;
                while i < text.len()
                    && matches!(text[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                if found.inexact_number.is_none() {
                    let token = String::from_utf8_lossy(&text[start..i]);
                    if !kept_exactly(&token) {
                        found.inexact_number = Some(token.into_owned());
                    }
                }
            }
            _ => {}
        }
    }
    found
}

/// Whether the JSON parser keeps this number token's value: an integer that fits 64
/// bits, or a decimal whose value a double holds as written. (A token that is not a
/// number at all is the parser's to refuse.)
fn kept_exactly(token: &str) -> bool {
    let is_integer = !token.contains(['.', 'e', 'E']);
    if is_integer {
        return token.parse::<i64>().is_ok() || token.parse::<u64>().is_ok();
    }
    let Ok(value) = token.parse::<f64>() else {
        return true;
    };
    value.is_finite() && decimal(token) == decimal(&format!("{value:e}"))
}

/// A decimal number's value as (negative, significant digits, power of ten of the
/// last digit), so that two spellings of one value compare equal.
fn decimal(token: &str) -> Option<(bool, String, i64)> {
    let (negative, unsigned) = match token.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, token),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{whole}{fraction}");
    let mut power = exponent - fraction.len() as i64;
    let trimmed = digits.trim_end_matches('0');
    power += (digits.len() - trimmed.len()) as i64;
    let significant = trimmed.trim_start_matches('0');
    if significant.is_empty() {
        return Some((false, String::new(), 0));
    }
    Some((negative, significant.to_owned(), power))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn depth_counts_nesting_and_ignores_brackets_in_strings() {
        let depth = |text: &[u8]| scan(text).depth;
        assert_eq!(depth(b"1"), 0);
        assert_eq!(depth(b"{}"), 1);
        assert_eq!(depth(br#"{"a": [1, {"b": []}]}"#), 4);
        assert_eq!(depth(br#"{"a": "[[[{{", "b": "\"[["}"#), 1);
        assert_eq!(depth(json!({"a": [[["x"]]]}).to_string().as_bytes()), 4);
    }

    #[test]
    fn numbers_the_parser_would_change_are_found() {
        let inexact = |text: &str| scan(text.as_bytes()).inexact_number;
        for kept in [
            "0",
            "-0",
            "42",
            "-9223372036854775808",
            "18446744073709551615",
            "0.1",
            "1.5",
            "1.50",
            "-2.5e-3",
            "1e3",
            "1E+3",
            "123456.789",
            "3.141592653589793",
            "0.30000000000000004",
            "5e-324",
        ] {
            assert_eq!(inexact(&format!("{{\"n\": {kept}}}")), None, "{kept}");
        }
        for changed in [
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234567890",
            "3.14159265358979323846",
            "0.1000000000000000055511151231257827",
            "1e400",
        ] {
            let text = format!("{{\"a\": \"99999999999999999999\", \"n\": [{changed}]}}");
            assert_eq!(inexact(&text).as_deref(), Some(changed), "{changed}");
        }
    }
}
