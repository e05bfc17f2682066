//! Injection detectors: normalization, then grammar-based detection per attack class.
//!
//! INTERFACE CONTRACT between the sanitize layer and the detectors (owned by the detector
//! work; the layer codes only against `Detectors`, `Finding` and `Kind`).

/// Class of attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// SQL injection.
    Sqli,
    /// Cross-site scripting.
    Xss,
    /// OS command injection.
    Cmdi,
    /// Path traversal / local file inclusion.
    Traversal,
    /// NoSQL operator injection.
    Nosql,
    /// CRLF / header injection.
    Crlf,
    /// JNDI / server-side template injection.
    Template,
}

impl Kind {
    /// Stable short name: `sqli`, `xss`, `cmdi`, `traversal`, `nosql`, `crlf`, `template`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Sqli => "sqli",
            Kind::Xss => "xss",
            Kind::Cmdi => "cmdi",
            Kind::Traversal => "traversal",
            Kind::Nosql => "nosql",
            Kind::Crlf => "crlf",
            Kind::Template => "template",
        }
    }
}

/// One detection: class and rule name (never the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    /// Class of attack.
    pub kind: Kind,
    /// Name of the rule that fired (stable, e.g. `sqli.union_select`).
    pub rule: &'static str,
}

/// The configured detector set. Cheap to share (`Arc`), `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Detectors {
    enabled: [bool; 7],
}

impl Default for Detectors {
    fn default() -> Self {
        Self { enabled: [true; 7] }
    }
}

impl Detectors {
    /// Only the given classes.
    pub fn only(kinds: &[Kind]) -> Self {
        let mut enabled = [false; 7];
        for k in kinds {
            enabled[*k as usize] = true;
        }
        Self { enabled }
    }

    /// Whether a class is enabled.
    pub fn is_enabled(&self, kind: Kind) -> bool {
        self.enabled[kind as usize]
    }

    /// Inspects one input value (already valid UTF-8; as the application receives it,
    /// i.e. URL-decoded once for query/form values). Normalization (bounded repeated
    /// percent-decoding, HTML entities, Unicode compatibility folding, control characters)
    /// happens inside. Returns the first finding, if any.
    pub fn inspect(&self, value: &str) -> Option<Finding> {
        // placeholder until the detector work lands
        let _ = value;
        None
    }
}
