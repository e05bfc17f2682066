//! Who is calling, as proven by the auth layer.
//!
//! [`Principal`] is defined on the ground floor so that the layers that read it (throttle,
//! quota, audit) do not depend on the auth layer that produces it. Layers meet only through
//! typed request extensions: the auth layer inserts a `Principal`, later layers read it.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

/// The kind of credential a principal was proven with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CredentialKind {
    /// An API key.
    ApiKey,
    /// A JWT bearer token verified locally.
    Jwt,
    /// An opaque token validated by OAuth2 introspection (RFC 7662).
    Introspection,
    /// A signed request (HTTP message signature).
    Signature,
    /// Anything else a custom authenticator produced.
    Other,
}

impl CredentialKind {
    /// A short stable name (`"api_key"`, `"jwt"`, ...), used in logs and keys.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::Jwt => "jwt",
            Self::Introspection => "introspection",
            Self::Signature => "signature",
            Self::Other => "other",
        }
    }
}

/// An authenticated caller. Cheap to clone (shared).
///
/// Never holds a secret: an API key principal carries the key id, a token principal the
/// subject and client id.
///
/// ```
/// use tower_shield::{CredentialKind, Principal};
///
/// let p = Principal::new("client-42", CredentialKind::ApiKey)
///     .with_key_id("k_7Hq2")
///     .with_scopes(["products:read", "orders:write"])
///     .with_plan("free");
/// assert!(p.has_scope("orders:write"));
/// assert_eq!(p.plan(), Some("free"));
/// ```
#[derive(Clone, PartialEq)]
pub struct Principal(Arc<PrincipalInner>);

#[derive(Clone, PartialEq)]
struct PrincipalInner {
    id: String,
    kind: CredentialKind,
    key_id: Option<String>,
    subject: Option<String>,
    client_id: Option<String>,
    scopes: BTreeSet<String>,
    plan: Option<String>,
    tenant: Option<String>,
    claims: serde_json::Map<String, serde_json::Value>,
}

impl Principal {
    /// A principal with a stable id (used as the throttle/quota key) and credential kind.
    pub fn new(id: impl Into<String>, kind: CredentialKind) -> Self {
        Self(Arc::new(PrincipalInner {
            id: id.into(),
            kind,
            key_id: None,
            subject: None,
            client_id: None,
            scopes: BTreeSet::new(),
            plan: None,
            tenant: None,
            claims: serde_json::Map::new(),
        }))
    }

    fn inner(&mut self) -> &mut PrincipalInner {
        Arc::make_mut(&mut self.0)
    }

    /// Sets the API key id.
    pub fn with_key_id(mut self, v: impl Into<String>) -> Self {
        self.inner().key_id = Some(v.into());
        self
    }
    /// Sets the token subject (`sub`).
    pub fn with_subject(mut self, v: impl Into<String>) -> Self {
        self.inner().subject = Some(v.into());
        self
    }
    /// Sets the OAuth2 client id.
    pub fn with_client_id(mut self, v: impl Into<String>) -> Self {
        self.inner().client_id = Some(v.into());
        self
    }
    /// Adds scopes.
    pub fn with_scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.inner()
            .scopes
            .extend(scopes.into_iter().map(Into::into));
        self
    }
    /// Sets the plan (tier) used to select quotas.
    pub fn with_plan(mut self, v: impl Into<String>) -> Self {
        self.inner().plan = Some(v.into());
        self
    }
    /// Sets the tenant.
    pub fn with_tenant(mut self, v: impl Into<String>) -> Self {
        self.inner().tenant = Some(v.into());
        self
    }
    /// Adds a selected claim.
    pub fn with_claim(mut self, name: impl Into<String>, value: serde_json::Value) -> Self {
        self.inner().claims.insert(name.into(), value);
        self
    }

    /// Stable id of the caller (throttle and quota key on it).
    pub fn id(&self) -> &str {
        &self.0.id
    }
    /// The credential kind.
    pub fn kind(&self) -> CredentialKind {
        self.0.kind
    }
    /// API key id, for key principals.
    pub fn key_id(&self) -> Option<&str> {
        self.0.key_id.as_deref()
    }
    /// Token subject.
    pub fn subject(&self) -> Option<&str> {
        self.0.subject.as_deref()
    }
    /// OAuth2 client id.
    pub fn client_id(&self) -> Option<&str> {
        self.0.client_id.as_deref()
    }
    /// Granted scopes.
    pub fn scopes(&self) -> &BTreeSet<String> {
        &self.0.scopes
    }
    /// Whether a scope was granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.0.scopes.contains(scope)
    }
    /// Plan (tier).
    pub fn plan(&self) -> Option<&str> {
        self.0.plan.as_deref()
    }
    /// Tenant.
    pub fn tenant(&self) -> Option<&str> {
        self.0.tenant.as_deref()
    }
    /// Selected claims.
    pub fn claims(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.0.claims
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("id", &self.0.id)
            .field("kind", &self.0.kind)
            .field("key_id", &self.0.key_id)
            .field("subject", &self.0.subject)
            .field("client_id", &self.0.client_id)
            .field("scopes", &self.0.scopes)
            .field("plan", &self.0.plan)
            .field("tenant", &self.0.tenant)
            .finish_non_exhaustive()
    }
}
