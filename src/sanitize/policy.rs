//! Actions, field selectors, route policies and limits.

use crate::error::ConfigError;

use super::detect::Kind;

/// What to do with a finding. In the config file: `"reject"`, `"sanitize"`, `"monitor"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Refuse the request: `400` problem+json naming the location and the class.
    #[default]
    Reject,
    /// Clean the value (HTML escape, strip or rich-text clean, see [`SanitizeMode`]) and pass
    /// the rewritten body on. Applies to string values of JSON and form bodies; a finding
    /// elsewhere (path, query, headers, cookies, text and multipart bodies), or of a class
    /// cleaning cannot fix (anything but `xss`), is rejected.
    Sanitize,
    /// Let the request through; record the findings (request extensions and
    /// [`RequestFacts`](crate::RequestFacts)).
    Monitor,
}

impl Action {
    /// `reject`, `sanitize` or `monitor`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Reject => "reject",
            Action::Sanitize => "sanitize",
            Action::Monitor => "monitor",
        }
    }
}

/// How a field under [`Action::Sanitize`] is cleaned. In the config file: `"escape"`,
/// `"strip"`, `"rich"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SanitizeMode {
    /// HTML-escape `& < > " '` (the value becomes inert text).
    #[default]
    Escape,
    /// Remove every tag (and the content of `script`/`style`), keep the text, HTML-escaped.
    Strip,
    /// Rich text: keep a safe subset of HTML (`ammonia`'s defaults: `<b>`, `<a href>`, ...).
    Rich,
}

/// Where an input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Path,
    Query,
    Header,
    Cookie,
    Body,
}

/// A field selector: `path`, `query.q`, `header.referer`, `cookie.session`, `body`
/// (the whole body), `body.description` (a field of that name at any depth: JSON key, form
/// or multipart field), `body./items/*/note` (a JSON pointer, `*` matching one segment),
/// or `<source>.*` (every field of that source). A JSON selector covers the member and
/// everything inside it (its keys and nested values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub(crate) source: Source,
    pub(crate) name: FieldName,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldName {
    /// Every field of the source.
    Any,
    /// A name (for the body: the last key at any depth).
    Name(String),
    /// A JSON pointer pattern, segments unescaped (`~1` → `/`, `~0` → `~`), `*` for any.
    Pointer(Vec<String>),
}

impl Field {
    /// Parses a selector; `key` names it in errors.
    pub fn parse(selector: &str, key: &str) -> Result<Self, ConfigError> {
        let err = |reason: &str| {
            ConfigError::invalid(
                key,
                format!("invalid field selector {selector:?}: {reason}"),
            )
        };
        let (src, rest) = match selector.split_once('.') {
            Some((s, r)) => (s, Some(r)),
            None => (selector, None),
        };
        let source = match src {
            "path" => Source::Path,
            "query" => Source::Query,
            "header" => Source::Header,
            "cookie" => Source::Cookie,
            "body" => Source::Body,
            _ => {
                return Err(err(
                    "expected path, query.<name>, header.<name>, cookie.<name>, body, body.<name> or body./json/pointer",
                ));
            }
        };
        let name = match rest {
            None if matches!(source, Source::Path | Source::Body) => FieldName::Any,
            None => return Err(err("a name is required after the source")),
            Some(_) if source == Source::Path => return Err(err("path takes no name")),
            Some("") => return Err(err("empty name")),
            Some("*") => FieldName::Any,
            Some(p) if p.starts_with('/') => {
                if source != Source::Body {
                    return Err(err("JSON pointers select body fields only"));
                }
                FieldName::Pointer(
                    p[1..]
                        .split('/')
                        .map(|s| s.replace("~1", "/").replace("~0", "~"))
                        .collect(),
                )
            }
            Some(n) if source == Source::Header => FieldName::Name(n.to_ascii_lowercase()),
            Some(n) => FieldName::Name(n.to_owned()),
        };
        Ok(Self { source, name })
    }
}

/// A rule for one field: its action, sanitize mode, and exempt classes.
#[derive(Debug, Clone)]
pub struct FieldRule {
    pub(crate) field: Field,
    pub(crate) action: Option<Action>,
    pub(crate) mode: SanitizeMode,
    pub(crate) exempt: Exempt,
}

impl FieldRule {
    /// A rule for the field named by `selector` (see [`Field`]).
    pub fn new(selector: &str) -> Result<Self, ConfigError> {
        Ok(Self::for_field(Field::parse(selector, "field")?))
    }
    /// A rule for an already parsed field.
    pub fn for_field(field: Field) -> Self {
        Self {
            field,
            action: None,
            mode: SanitizeMode::default(),
            exempt: Exempt::default(),
        }
    }
    /// The action for findings in this field (default: the route's).
    pub fn action(mut self, action: Action) -> Self {
        self.action = Some(action);
        self
    }
    /// Cleans this field ([`Action::Sanitize`]) with the given mode.
    pub fn sanitize(mut self, mode: SanitizeMode) -> Self {
        self.action = Some(Action::Sanitize);
        self.mode = mode;
        self
    }
    /// Exempts one class of finding in this field (e.g. `xss` for a `description` that
    /// may contain `<b>`).
    pub fn exempt(mut self, kind: Kind) -> Self {
        self.exempt.add(kind);
        self
    }
    /// Exempts the field from inspection altogether.
    pub fn exempt_all(mut self) -> Self {
        self.exempt = Exempt::ALL;
        self
    }
}

/// A set of exempt classes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Exempt(u8);

impl Exempt {
    pub(crate) const ALL: Exempt = Exempt(0x7f);
    pub(crate) fn add(&mut self, kind: Kind) {
        self.0 |= 1 << (kind as u8);
    }
    pub(crate) fn contains(&self, kind: Kind) -> bool {
        self.0 & (1 << (kind as u8)) != 0
    }
    pub(crate) fn union(self, other: Exempt) -> Exempt {
        Exempt(self.0 | other.0)
    }
    pub(crate) fn is_all(&self) -> bool {
        self.0 & Self::ALL.0 == Self::ALL.0
    }
}

/// Parses a class name (`sqli`, `xss`, `cmdi`, `traversal`, `nosql`, `crlf`, `template`).
pub fn parse_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "sqli" => Kind::Sqli,
        "xss" => Kind::Xss,
        "cmdi" => Kind::Cmdi,
        "traversal" => Kind::Traversal,
        "nosql" => Kind::Nosql,
        "crlf" => Kind::Crlf,
        "template" => Kind::Template,
        _ => return None,
    })
}

/// The policy of one route (or the default policy of the layer).
#[derive(Debug, Clone, Default)]
pub struct RoutePolicy {
    pub(crate) action: Option<Action>,
    pub(crate) mode: SanitizeMode,
    pub(crate) exempt: Exempt,
    pub(crate) fields: Vec<FieldRule>,
}

impl RoutePolicy {
    /// A policy inheriting the layer's action.
    pub fn new() -> Self {
        Self::default()
    }
    /// The action for findings on this route.
    pub fn action(mut self, action: Action) -> Self {
        self.action = Some(action);
        self
    }
    /// Cleans every body string value on this route with `mode`.
    pub fn sanitize(mut self, mode: SanitizeMode) -> Self {
        self.action = Some(Action::Sanitize);
        self.mode = mode;
        self
    }
    /// Exempts one class on the whole route (e.g. `sqli` for a reporting endpoint that
    /// accepts SQL).
    pub fn exempt(mut self, kind: Kind) -> Self {
        self.exempt.add(kind);
        self
    }
    /// Exempts the route from inspection (structure limits still apply).
    pub fn exempt_all(mut self) -> Self {
        self.exempt = Exempt::ALL;
        self
    }
    /// Adds a field rule (first matching rule wins; route rules before global rules).
    pub fn field(mut self, rule: FieldRule) -> Self {
        self.fields.push(rule);
        self
    }
}

/// What to do with bodies the layer does not inspect. In the config file: `"pass"`,
/// `"refuse"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentPolicy {
    /// Pass them through unscanned and unbuffered.
    #[default]
    Pass,
    /// Refuse them: `415 Unsupported Media Type`.
    Refuse,
}

/// Structure limits. Every limit is enforced on every route, whatever the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest body buffered for inspection, in bytes (`413` beyond). Default 1 MiB.
    pub max_body_bytes: usize,
    /// Deepest JSON nesting (objects and arrays). Default 32.
    pub max_depth: usize,
    /// Most members in one JSON object (also: form and multipart fields). Default 1000.
    pub max_keys: usize,
    /// Longest JSON array. Default 10 000.
    pub max_array_len: usize,
    /// Longest string (JSON string, form or query value, header, cookie), in bytes as sent.
    /// Default 64 KiB.
    pub max_string_len: usize,
    /// Refuse JSON objects with duplicate keys. Default true.
    pub reject_duplicate_keys: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_depth: 32,
            max_keys: 1000,
            max_array_len: 10_000,
            max_string_len: 64 << 10,
            reject_duplicate_keys: true,
        }
    }
}
