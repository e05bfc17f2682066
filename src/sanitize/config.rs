//! The `[sanitize]` section of the configuration file.
//!
//! ```toml
//! [sanitize]
//! action = "reject"                 # default action: reject | sanitize | monitor
//! mode = "escape"                   # cleaning for routes under "sanitize": escape | strip | rich
//! exempt = []                       # classes never reported: sqli xss cmdi traversal nosql crlf template
//! headers = ["referer", "user-agent"]
//! cookies = true
//! other_content_types = "pass"      # bodies not JSON/form/text/multipart: pass | refuse (415)
//! grpc = "pass"                     # gRPC bodies: pass | refuse (415)
//!
//! [sanitize.limits]
//! max_body_bytes = 1048576          # 413 beyond
//! max_depth = 32
//! max_keys = 1000
//! max_array_len = 10000
//! max_string_len = 65536
//! reject_duplicate_keys = true
//!
//! [[sanitize.fields]]               # on every route
//! field = "body.description"
//! exempt = ["xss"]
//!
//! [[sanitize.routes]]
//! route = "POST /products/{id}/reviews"
//! fields = [{ field = "body.review", action = "sanitize", mode = "rich" }]
//!
//! [[sanitize.routes]]
//! route = "/admin/*"
//! action = "monitor"
//!
//! [[sanitize.routes]]
//! route = "POST /reports"
//! exempt = ["sqli"]                 # or ["*"]: not inspected at all
//! ```
//!
//! ```
//! use tower_shield::sanitize::SanitizeConfig;
//! let cfg: SanitizeConfig = toml::from_str("exempt = [\"sql\"]").unwrap();
//! let err = cfg.build().unwrap_err();
//! assert!(err.to_string().starts_with("sanitize.exempt[0]:"));
//! ```

use serde::Deserialize;

use crate::error::ConfigError;

use super::policy::{
    Action, ContentPolicy, Exempt, Field, FieldRule, Limits, RoutePolicy, SanitizeMode, parse_kind,
};
use super::{SanitizeBuilder, SanitizeLayer};

/// `[sanitize]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SanitizeConfig {
    /// Default action.
    #[serde(default)]
    pub action: Action,
    /// Default cleaning mode.
    #[serde(default)]
    pub mode: SanitizeMode,
    /// Classes exempt everywhere.
    #[serde(default)]
    pub exempt: Vec<String>,
    /// Headers to inspect (default `referer`, `user-agent`).
    pub headers: Option<Vec<String>>,
    /// Whether cookies are inspected.
    #[serde(default = "yes")]
    pub cookies: bool,
    /// Bodies of other content types.
    #[serde(default)]
    pub other_content_types: ContentPolicy,
    /// gRPC bodies.
    #[serde(default)]
    pub grpc: ContentPolicy,
    /// Structure limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Field rules for every route.
    #[serde(default)]
    pub fields: Vec<FieldConfig>,
    /// Route policies.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

fn yes() -> bool {
    true
}

impl Default for SanitizeConfig {
    fn default() -> Self {
        Self {
            action: Action::default(),
            mode: SanitizeMode::default(),
            exempt: Vec::new(),
            headers: None,
            cookies: true,
            other_content_types: ContentPolicy::default(),
            grpc: ContentPolicy::default(),
            limits: LimitsConfig::default(),
            fields: Vec::new(),
            routes: Vec::new(),
        }
    }
}

/// `[sanitize.limits]` (unset values keep the defaults of [`Limits`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// See [`Limits::max_body_bytes`].
    pub max_body_bytes: Option<usize>,
    /// See [`Limits::max_depth`].
    pub max_depth: Option<usize>,
    /// See [`Limits::max_keys`].
    pub max_keys: Option<usize>,
    /// See [`Limits::max_array_len`].
    pub max_array_len: Option<usize>,
    /// See [`Limits::max_string_len`].
    pub max_string_len: Option<usize>,
    /// See [`Limits::reject_duplicate_keys`].
    pub reject_duplicate_keys: Option<bool>,
}

/// `[[sanitize.fields]]` or `[[sanitize.routes]].fields`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// Selector (see [`Field`]).
    pub field: String,
    /// Action for this field.
    pub action: Option<Action>,
    /// Cleaning mode (with `action = "sanitize"`).
    pub mode: Option<SanitizeMode>,
    /// Exempt classes (`"*"`: not inspected).
    #[serde(default)]
    pub exempt: Vec<String>,
}

/// `[[sanitize.routes]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Route pattern (`"POST /reports"`, `"/admin/*"`).
    pub route: String,
    /// Action on this route.
    pub action: Option<Action>,
    /// Cleaning mode on this route.
    pub mode: Option<SanitizeMode>,
    /// Exempt classes (`"*"`: not inspected).
    #[serde(default)]
    pub exempt: Vec<String>,
    /// Field rules of this route.
    #[serde(default)]
    pub fields: Vec<FieldConfig>,
}

fn exempt(list: &[String], key: &str) -> Result<Exempt, ConfigError> {
    let mut e = Exempt::default();
    for (i, name) in list.iter().enumerate() {
        if name == "*" {
            e = Exempt::ALL;
        } else {
            e.add(parse_kind(name).ok_or_else(|| {
                ConfigError::invalid(
                    format!("{key}[{i}]"),
                    format!(
                        "unknown class {name:?}; expected sqli, xss, cmdi, traversal, nosql, crlf, template or \"*\""
                    ),
                )
            })?);
        }
    }
    Ok(e)
}

fn field(f: &FieldConfig, key: &str) -> Result<FieldRule, ConfigError> {
    let mut rule = FieldRule::for_field(Field::parse(&f.field, &format!("{key}.field"))?);
    rule.action = f.action;
    rule.mode = f.mode.unwrap_or_default();
    if f.mode.is_some() && f.action != Some(Action::Sanitize) {
        return Err(ConfigError::invalid(
            format!("{key}.mode"),
            "a mode needs action = \"sanitize\"",
        ));
    }
    rule.exempt = exempt(&f.exempt, &format!("{key}.exempt"))?;
    Ok(rule)
}

impl SanitizeConfig {
    /// Validates the section into a builder (to which code can add more).
    pub fn into_builder(self) -> Result<SanitizeBuilder, ConfigError> {
        let d = Limits::default();
        let l = &self.limits;
        let limits = Limits {
            max_body_bytes: l.max_body_bytes.unwrap_or(d.max_body_bytes),
            max_depth: l.max_depth.unwrap_or(d.max_depth),
            max_keys: l.max_keys.unwrap_or(d.max_keys),
            max_array_len: l.max_array_len.unwrap_or(d.max_array_len),
            max_string_len: l.max_string_len.unwrap_or(d.max_string_len),
            reject_duplicate_keys: l.reject_duplicate_keys.unwrap_or(d.reject_duplicate_keys),
        };
        let mut b = SanitizeBuilder::default()
            .action(self.action)
            .sanitize_mode(self.mode)
            .inspect_cookies(self.cookies)
            .other_content_types(self.other_content_types)
            .grpc(self.grpc)
            .limits(limits);
        b.exempt = exempt(&self.exempt, "sanitize.exempt")?;
        if let Some(h) = self.headers {
            b = b.headers(h);
        }
        for (i, f) in self.fields.iter().enumerate() {
            b = b.field(field(f, &format!("sanitize.fields[{i}]"))?);
        }
        for (i, r) in self.routes.iter().enumerate() {
            let key = format!("sanitize.routes[{i}]");
            let mut p = RoutePolicy::new();
            p.action = r.action;
            p.mode = r.mode.unwrap_or(self.mode);
            p.exempt = exempt(&r.exempt, &format!("{key}.exempt"))?;
            for (j, f) in r.fields.iter().enumerate() {
                p.fields.push(field(f, &format!("{key}.fields[{j}]"))?);
            }
            crate::route::RoutePattern::parse(&r.route, &format!("{key}.route"))?;
            b = b.route(&r.route, p)?;
        }
        Ok(b)
    }

    /// Validates the section into the layer.
    pub fn build(self) -> Result<SanitizeLayer, ConfigError> {
        self.into_builder()?.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC_EXAMPLE: &str = r#"[sanitize]
action = "reject"                 # default action: reject | sanitize | monitor
mode = "escape"                   # cleaning for routes under "sanitize": escape | strip | rich
exempt = []                       # classes never reported: sqli xss cmdi traversal nosql crlf template
headers = ["referer", "user-agent"]
cookies = true
other_content_types = "pass"      # bodies not JSON/form/text/multipart: pass | refuse (415)
grpc = "pass"                     # gRPC bodies: pass | refuse (415)

[sanitize.limits]
max_body_bytes = 1048576          # 413 beyond
max_depth = 32
max_keys = 1000
max_array_len = 10000
max_string_len = 65536
reject_duplicate_keys = true

[[sanitize.fields]]               # on every route
field = "body.description"
exempt = ["xss"]

[[sanitize.routes]]
route = "POST /products/{id}/reviews"
fields = [{ field = "body.review", action = "sanitize", mode = "rich" }]

[[sanitize.routes]]
route = "/admin/*"
action = "monitor"

[[sanitize.routes]]
route = "POST /reports"
exempt = ["sqli"]                 # or ["*"]: not inspected at all
"#;

    fn err(toml_text: &str) -> String {
        let c: SanitizeConfig = toml::from_str(toml_text).unwrap();
        c.build().unwrap_err().to_string()
    }

    #[test]
    fn full_section_builds() {
        #[derive(Deserialize)]
        struct File {
            sanitize: SanitizeConfig,
        }
        let f: File = toml::from_str(DOC_EXAMPLE).unwrap();
        let layer = f.sanitize.build().unwrap();
        assert_eq!(layer.limits().max_depth, 32);
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("[[routes]]\nroute = \"GET x\"").starts_with("sanitize.routes[0].route"));
        assert!(
            err(
                "[[routes]]\nroute = \"/a\"\nfields = [{ field = \"body\" }, { field = \"query\" }]"
            )
            .starts_with("sanitize.routes[0].fields[1].field")
        );
        assert!(
            err("[[fields]]\nfield = \"body.x\"\nmode = \"rich\"")
                .starts_with("sanitize.fields[0].mode")
        );
        assert!(
            err("[[fields]]\nfield = \"body.x\"\nexempt = [\"xss\", \"html\"]")
                .starts_with("sanitize.fields[0].exempt[1]")
        );
        assert!(err("headers = [\"bad header\"]").starts_with("sanitize.headers[0]"));
        assert!(err("[limits]\nmax_depth = 0").starts_with("sanitize.limits.max_depth"));
        assert!(toml::from_str::<SanitizeConfig>("actoin = \"reject\"").is_err());
        assert!(toml::from_str::<SanitizeConfig>("action = \"block\"").is_err());
    }
}
