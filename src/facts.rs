//! Facts about a request, gathered by the layers for outer observers (audit, metrics).
//!
//! Request extensions flow inward: an outer layer cannot read what an inner layer inserted
//! into a request it already passed on (and when the client goes away, no response ever
//! comes back). So an observer inserts a shared [`RequestFacts`] into the request
//! extensions, and the layers inside record into it what they learn: the client address,
//! the matched route, the [`Principal`], sanitizer findings, shadow-mode denials. Recording
//! costs nothing when no observer is present.
//!
//! ```
//! use std::sync::Arc;
//! use http::Request;
//! use tower_shield::facts::{self, RequestFacts};
//! use tower_shield::{CredentialKind, Principal};
//!
//! let mut req = Request::new(());
//! let shared = Arc::new(RequestFacts::default());
//! req.extensions_mut().insert(shared.clone());
//! // ... inside, the auth layer records who is calling:
//! facts::record_principal(req.extensions(), &Principal::new("c1", CredentialKind::ApiKey));
//! assert_eq!(shared.principal().unwrap().id(), "c1");
//! ```

use std::sync::{Arc, Mutex, OnceLock};

use http::Extensions;

use crate::client_ip::ClientIp;
use crate::denial::Denial;
use crate::principal::Principal;
use crate::route::MatchedRoute;

/// A finding of the input sanitizer: where, which class, which rule. Never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFinding {
    /// Location of the input (`query.q`, `body./items/0/note`, `header.referer`).
    pub location: String,
    /// Class of attack (`sqli`, `xss`, `cmdi`, `traversal`, `nosql`, `crlf`, `template`).
    pub kind: &'static str,
    /// The rule that fired.
    pub rule: &'static str,
    /// What was done: `reject`, `sanitize` or `monitor`.
    pub action: &'static str,
}

/// Facts recorded by the layers during one request. Shared through an `Arc` in the request
/// extensions.
#[derive(Debug, Default)]
pub struct RequestFacts {
    client_ip: OnceLock<ClientIp>,
    route: OnceLock<MatchedRoute>,
    principal: OnceLock<Principal>,
    findings: Mutex<Vec<InputFinding>>,
    shadow_denials: Mutex<Vec<Denial>>,
}

impl RequestFacts {
    /// The resolved client address.
    pub fn client_ip(&self) -> Option<ClientIp> {
        self.client_ip.get().copied()
    }
    /// The matched route.
    pub fn route(&self) -> Option<&MatchedRoute> {
        self.route.get()
    }
    /// The authenticated principal.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.get()
    }
    /// Sanitizer findings.
    pub fn findings(&self) -> Vec<InputFinding> {
        self.findings.lock().map(|f| f.clone()).unwrap_or_default()
    }
    /// Denials that shadow-mode policies would have issued.
    pub fn shadow_denials(&self) -> Vec<Denial> {
        self.shadow_denials
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default()
    }
}

fn get(ext: &Extensions) -> Option<&RequestFacts> {
    ext.get::<Arc<RequestFacts>>().map(|a| &**a)
}

/// Records the client address (first value wins).
pub fn record_client_ip(ext: &Extensions, ip: ClientIp) {
    if let Some(f) = get(ext) {
        let _ = f.client_ip.set(ip);
    }
}

/// Records the matched route (first value wins).
pub fn record_route(ext: &Extensions, route: &MatchedRoute) {
    if let Some(f) = get(ext) {
        let _ = f.route.set(route.clone());
    }
}

/// Records the principal (first value wins).
pub fn record_principal(ext: &Extensions, principal: &Principal) {
    if let Some(f) = get(ext) {
        let _ = f.principal.set(principal.clone());
    }
}

/// Records a sanitizer finding.
pub fn record_finding(ext: &Extensions, finding: InputFinding) {
    if let Some(mut v) = get(ext).and_then(|f| f.findings.lock().ok())
        && v.len() < 64
    {
        v.push(finding);
    }
}

/// Records a denial a shadow-mode policy would have issued (the request went through).
pub fn record_shadow_denial(ext: &Extensions, denial: Denial) {
    if let Some(mut v) = get(ext).and_then(|f| f.shadow_denials.lock().ok())
        && v.len() < 16
    {
        v.push(denial.into_shadow());
    }
}
