//! Redaction of secrets from logged strings.
//!
//! - Headers `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie` and the
//!   configured API-key headers are never logged in clear, even when listed in
//!   `log_headers`: their value is replaced by `[REDACTED]`.
//! - Query parameters whose name looks like a credential (`access_token`, `api_key`,
//!   `token`, `password`, `secret`, `signature`, ... or any name containing `token`,
//!   `secret`, `passw`, `apikey`, `api_key`, `api-key`, `session`, `credential`) keep their
//!   name; their value becomes `[REDACTED]`. The same `name=value` pattern is redacted in
//!   every other logged string (user agent, logged headers), as is `Bearer <token>`.
//! - Payment card numbers: runs of 13–19 digits (single spaces, dashes or `%20` between
//!   them allowed) starting with 2–6 that pass the Luhn check become `[CARD]`, anywhere.

/// Replacement for a secret value.
pub const REDACTED: &str = "[REDACTED]";
/// Replacement for a card number.
pub const CARD: &str = "[CARD]";

const SECRET_PARAMS: &[&str] = &[
    "access_token",
    "refresh_token",
    "id_token",
    "token",
    "api_key",
    "apikey",
    "key",
    "password",
    "passwd",
    "pwd",
    "pass",
    "secret",
    "client_secret",
    "signature",
    "sig",
    "auth",
    "authorization",
    "code",
    "otp",
    "pin",
    "cvv",
    "cvc",
    "ssn",
];

const SECRET_FRAGMENTS: &[&str] = &[
    "token",
    "secret",
    "passw",
    "apikey",
    "api_key",
    "api-key",
    "session",
    "credential",
];

/// Redaction rules.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    extra_params: Vec<String>,
}

impl Redactor {
    /// Adds a query parameter name (case-insensitive) to redact.
    pub fn secret_param(&mut self, name: &str) {
        self.extra_params.push(name.to_ascii_lowercase());
    }

    /// Whether a parameter name denotes a secret.
    pub fn is_secret_param(&self, raw_name: &str) -> bool {
        let decoded = percent_encoding::percent_decode_str(raw_name).decode_utf8_lossy();
        let name = decoded.trim().to_ascii_lowercase();
        SECRET_PARAMS.contains(&name.as_str())
            || SECRET_FRAGMENTS.iter().any(|f| name.contains(f))
            || self.extra_params.contains(&name)
    }

    /// Redacts a request target (`/path?query`): secret query values and card numbers.
    pub fn path_and_query(&self, target: &str) -> String {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let mut out = String::with_capacity(target.len());
        out.push_str(path);
        if let Some(q) = query {
            out.push('?');
            for (i, pair) in q.split('&').enumerate() {
                if i > 0 {
                    out.push('&');
                }
                match pair.split_once('=') {
                    Some((k, _)) if self.is_secret_param(k) => {
                        out.push_str(k);
                        out.push('=');
                        out.push_str(REDACTED);
                    }
                    _ => out.push_str(pair),
                }
            }
        }
        redact_cards(&out)
    }

    /// Redacts a free-form string (user agent, header value): `name=value` pairs with a
    /// secret name, `Bearer`/`Basic` credentials, and card numbers.
    pub fn text(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let bytes = s.as_bytes();
        let mut i = 0;
        let mut copied = 0;
        while i < bytes.len() {
            if bytes[i] == b'=' {
                let mut start = i;
                while start > 0 && is_name_byte(bytes[start - 1]) {
                    start -= 1;
                }
                if start < i && self.is_secret_param(&s[start..i]) {
                    let mut end = i + 1;
                    while end < bytes.len() && !is_value_end(bytes[end]) {
                        end += 1;
                    }
                    out.push_str(&s[copied..=i]);
                    out.push_str(REDACTED);
                    copied = end;
                    i = end;
                    continue;
                }
            }
            if let Some(scheme) = auth_scheme_at(bytes, i) {
                let mut start = i + scheme;
                while start < bytes.len() && bytes[start] == b' ' {
                    start += 1;
                }
                let mut end = start;
                while end < bytes.len() && is_b64token_byte(bytes[end]) {
                    end += 1;
                }
                if end > start {
                    out.push_str(&s[copied..start]);
                    out.push_str(REDACTED);
                    copied = end;
                    i = end;
                    continue;
                }
            }
            i += 1;
        }
        out.push_str(&s[copied..]);
        redact_cards(&out)
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'%')
}

/// RFC 6750 `b64token` characters.
fn is_b64token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

fn is_value_end(b: u8) -> bool {
    matches!(
        b,
        b'&' | b';' | b',' | b' ' | b'"' | b'\'' | b'\t' | b'\r' | b'\n'
    )
}

fn auth_scheme_at(bytes: &[u8], i: usize) -> Option<usize> {
    if i > 0 && bytes[i - 1].is_ascii_alphanumeric() {
        return None;
    }
    for scheme in [&b"bearer "[..], b"basic ", b"dpop "] {
        if bytes.len() >= i + scheme.len()
            && bytes[i..i + scheme.len()].eq_ignore_ascii_case(scheme)
        {
            return Some(scheme.len());
        }
    }
    None
}

/// Replaces Luhn-valid card numbers (13–19 digits, first digit 2–6, single separators
/// ` `, `-`, `%20`, `+` allowed between digits) with `[CARD]`.
pub fn redact_cards(s: &str) -> String {
    let b = s.as_bytes();
    // Fast path: fewer than 13 digits in total cannot hold a card.
    if b.iter().filter(|c| c.is_ascii_digit()).count() < 13 {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() || (i > 0 && b[i - 1].is_ascii_alphanumeric()) {
            i += 1;
            continue;
        }
        // Collect a run of digits with single separators: (digit value, byte end).
        let mut digits: Vec<(u8, usize)> = Vec::with_capacity(24);
        let mut j = i;
        while j < b.len() && digits.len() < 40 {
            if b[j].is_ascii_digit() {
                digits.push((b[j] - b'0', j + 1));
                j += 1;
                continue;
            }
            let sep = match b[j] {
                b' ' | b'-' | b'+' => 1,
                b'%' if b.len() >= j + 3 && &b[j + 1..j + 3] == b"20" => 3,
                _ => 0,
            };
            if sep > 0 && b.get(j + sep).is_some_and(u8::is_ascii_digit) {
                j += sep;
            } else {
                break;
            }
        }
        // Longest Luhn-valid prefix of 13..=19 digits that ends at a digit-run boundary.
        let mut matched = None;
        for len in (13..=19).rev() {
            if digits.len() < len {
                continue;
            }
            let end = digits[len - 1].1;
            let ends_clean = !b.get(end).is_some_and(u8::is_ascii_alphanumeric);
            if ends_clean && (2..=6).contains(&digits[0].0) && luhn(&digits[..len]) {
                matched = Some(end);
                break;
            }
        }
        match matched {
            Some(end) => {
                out.push_str(&s[copied..i]);
                out.push_str(CARD);
                copied = end;
                i = end;
            }
            None => {
                // Skip to the next group start within this run.
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
        }
    }
    out.push_str(&s[copied..]);
    out
}

fn luhn(digits: &[(u8, usize)]) -> bool {
    let mut sum = 0u32;
    for (k, (d, _)) in digits.iter().rev().enumerate() {
        let mut d = u32::from(*d);
        if k % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

/// Whether a header is always redacted (credentials and cookies).
pub fn is_secret_header(name: &str) -> bool {
    matches!(
        name,
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_like_query_parameters_are_redacted() {
        let r = Redactor::default();
        assert_eq!(
            r.path_and_query("/a?access_token=abc&x=1&API_KEY=zz&my_session_id=s&q=token"),
            "/a?access_token=[REDACTED]&x=1&API_KEY=[REDACTED]&my_session_id=[REDACTED]&q=token"
        );
        assert_eq!(
            r.path_and_query("/a?pass%77ord=x"),
            "/a?pass%77ord=[REDACTED]"
        );
    }

    #[test]
    fn card_numbers_are_redacted_with_separators() {
        for card in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "5555-5555-5555-4444",
            "378282246310005",
            "4111%201111%201111%201111",
        ] {
            let s = format!("/pay?n={card}&x=1");
            let out = redact_cards(&s);
            assert_eq!(out, "/pay?n=[CARD]&x=1", "{card}");
        }
        // Not Luhn-valid, or too short: kept.
        assert_eq!(redact_cards("4111111111111112"), "4111111111111112");
        assert_eq!(redact_cards("order 123456789012"), "order 123456789012");
        // A card after other digits in the same text.
        assert_eq!(
            redact_cards("id 12 card 4111-1111-1111-1111."),
            "id 12 card [CARD]."
        );
    }

    #[test]
    fn free_text_redacts_bearer_and_secret_pairs() {
        let r = Redactor::default();
        assert_eq!(
            r.text("curl Bearer eyJhbGc.x.y; password=hunter2, ok=1"),
            "curl Bearer [REDACTED]; password=[REDACTED], ok=1"
        );
    }
}
