//! JWT bearer tokens: verification with an algorithm allow-list fixed by each key's family,
//! and keys from PEM, a static JWKS, a JWKS URL or OIDC discovery.
//!
//! - The algorithm comes from the **key**, never from the token: an RSA key verifies only
//!   RS*/PS* signatures, an HMAC secret only HS*, so an RSA public key can never be used as
//!   an HMAC secret. `none` is not an algorithm jsonwebtoken accepts at all.
//! - `exp` is required; `nbf`, `iss`, `aud` are checked when present or configured; leeway
//!   is bounded (at most 5 minutes). Times are read through the layer's [`Clock`].
//! - `typ` may be absent, `JWT`, or `at+jwt` (RFC 9068); anything else is refused, as is a
//!   `crit` header. `jku`, `x5u`, `jwk` and `x5c` headers are ignored: keys come only from
//!   the configured source.
//! - Remote keys (JWKS URL or discovery) live in an [`ArcSwap`]: the request path loads them
//!   without a lock. An unknown `kid` triggers a refresh at most once per cool-down, so
//!   random kids cannot turn into a flood of fetches; a background task refreshes
//!   periodically; when the issuer is down the last good keys stay in use. Startup never
//!   waits for the issuer: until the first fetch succeeds, tokens are refused.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, UNIX_EPOCH};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::clock::{SharedClock, system_clock};
use crate::error::ConfigError;
use crate::principal::{CredentialKind, Principal};

/// Upper bound for the configured leeway.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not a usable token (bad shape, signature, algorithm, issuer, audience, type...).
    Invalid,
    /// `exp` is in the past.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// The token names a key this verifier does not know (yet).
    UnknownKey,
}

impl TokenError {
    /// The RFC 6750 `error_description` for this error.
    pub fn description(&self) -> &'static str {
        match self {
            Self::Expired => "The access token expired",
            Self::NotYetValid => "The access token is not yet valid",
            Self::Invalid | Self::UnknownKey => "The access token is invalid",
        }
    }
    /// The denial reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::Invalid => "invalid_token",
            Self::UnknownKey => "unknown_key",
        }
    }
}

struct VerifyKey {
    key: DecodingKey,
    /// The algorithms this key verifies (its family, filtered by the allow-list).
    algorithms: Vec<Algorithm>,
}

/// A set of verification keys, by `kid`.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    anonymous: Vec<Arc<VerifyKey>>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .field("anonymous", &self.anonymous.len())
            .finish()
    }
}

impl KeySet {
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether a key id is known.
    pub fn contains(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }
}

/// Token checks shared by all keys.
#[derive(Debug, Clone)]
struct Checks {
    issuers: Option<Vec<String>>,
    audiences: Option<Vec<String>>,
    leeway: u64,
    allowed: Vec<Algorithm>,
}

impl Checks {
    fn algs_for(&self, family: AlgorithmFamily, jwk_alg: Option<Algorithm>) -> Vec<Algorithm> {
        let family_algs = family.algorithms();
        match jwk_alg {
            Some(a) if family_algs.contains(&a) && self.allowed.contains(&a) => vec![a],
            Some(_) => Vec::new(),
            None => family_algs
                .iter()
                .copied()
                .filter(|a| self.allowed.contains(a))
                .collect(),
        }
    }

    fn key(&self, key: DecodingKey, jwk_alg: Option<Algorithm>) -> Option<Arc<VerifyKey>> {
        let algs = self.algs_for(key.family(), jwk_alg);
        (!algs.is_empty()).then(|| {
            Arc::new(VerifyKey {
                key,
                algorithms: algs,
            })
        })
    }

    /// Builds a key set from a JWKS document, skipping keys it cannot use. Symmetric (`oct`)
    /// keys are skipped unless `allow_oct` (never for remote sets).
    fn key_set_from_jwks(&self, doc: &[u8], allow_oct: bool) -> Result<KeySet, String> {
        #[derive(Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(doc).map_err(|e| format!("invalid JWKS: {e}"))?;
        let mut set = KeySet::default();
        for v in doc.keys.into_iter().take(64) {
            let Ok(jwk) = serde_json::from_value::<Jwk>(v) else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) && !allow_oct {
                continue;
            }
            let mut alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            if jwk.common.key_algorithm.is_some() && alg.is_none() {
                continue; // an algorithm we do not support (e.g. RSA-OAEP)
            }
            if let AlgorithmParameters::EllipticCurve(ec) = &jwk.algorithm {
                let by_curve = match ec.curve {
                    EllipticCurve::P256 => Algorithm::ES256,
                    EllipticCurve::P384 => Algorithm::ES384,
                    _ => continue,
                };
                if alg.is_some_and(|a| a != by_curve) {
                    continue;
                }
                alg = Some(by_curve);
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            let Some(vk) = self.key(key, alg) else {
                continue;
            };
            match jwk.common.key_id {
                Some(kid) => {
                    set.by_kid.insert(kid, vk);
                }
                None => set.anonymous.push(vk),
            }
        }
        Ok(set)
    }
}

/// The claims the layer reads, borrowed from the decoded payload where possible.
#[derive(Deserialize)]
struct Claims<'a> {
    exp: Option<f64>,
    nbf: Option<f64>,
    #[serde(borrow)]
    sub: Option<Cow<'a, str>>,
    #[serde(borrow)]
    client_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    azp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    scope: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    scp: Strs<'a>,
    #[serde(borrow, default)]
    iss: Strs<'a>,
    #[serde(borrow, default)]
    aud: Strs<'a>,
}

/// A claim that is a string or an array of strings (`aud`, `iss`, `scp`).
#[derive(Default)]
enum Strs<'a> {
    #[default]
    Absent,
    One(Cow<'a, str>),
    Many(Vec<Cow<'a, str>>),
    /// Present with another type.
    Other,
}

impl Strs<'_> {
    /// Whether the claim holds at least one of `allowed`.
    fn intersects(&self, allowed: &[String]) -> bool {
        match self {
            Strs::One(s) => allowed.iter().any(|a| a == s),
            Strs::Many(v) => v.iter().any(|s| allowed.iter().any(|a| a == s)),
            Strs::Absent | Strs::Other => false,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Strs<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V;
        /// One array element: a string, or anything else.
        struct Item<'a>(Option<Cow<'a, str>>);
        impl<'de: 'a, 'a> Deserialize<'de> for Item<'a> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Ok(match d.deserialize_any(V)? {
                    Strs::One(s) => Item(Some(s)),
                    _ => Item(None),
                })
            }
        }
        impl<'de> Visitor<'de> for V {
            type Value = Strs<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Strs<'de>, E> {
                Ok(Strs::One(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Strs<'de>, E> {
                Ok(Strs::One(Cow::Owned(v.to_owned())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strs<'de>, A::Error> {
                let mut out = Vec::new();
                let mut other = false;
                while let Some(Item(s)) = seq.next_element::<Item<'de>>()? {
                    match s {
                        Some(s) if out.len() < 256 => out.push(s),
                        Some(_) => {}
                        None => other = true,
                    }
                }
                Ok(if other { Strs::Other } else { Strs::Many(out) })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strs<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Strs::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Strs<'de>, E> {
                Ok(Strs::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Strs<'de>, E> {
                Ok(Strs::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Strs<'de>, E> {
                Ok(Strs::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Strs<'de>, E> {
                Ok(Strs::Other)
            }
            fn visit_unit<E>(self) -> Result<Strs<'de>, E> {
                Ok(Strs::Absent)
            }
        }
        d.deserialize_any(V)
    }
}

/// The JOSE header fields the layer reads.
#[derive(Deserialize)]
struct HeaderLite<'a> {
    #[serde(borrow)]
    alg: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    typ: Option<Cow<'a, str>>,
    crit: Option<IgnoredAny>,
}

enum Keys {
    Static(Arc<KeySet>),
    Remote(Arc<RemoteKeys>),
}

/// Verifies JWT access tokens. Cheap to clone.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<VerifierInner>,
}

struct VerifierInner {
    keys: Keys,
    checks: Checks,
    clock: SharedClock,
    copy_claims: Vec<String>,
    max_len: usize,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("JwtVerifier");
        match &self.inner.keys {
            Keys::Static(s) => d.field("keys", s),
            Keys::Remote(r) => d.field("jwks", &r.source),
        };
        d.field("issuers", &self.inner.checks.issuers)
            .field("audiences", &self.inner.checks.audiences)
            .finish_non_exhaustive()
    }
}

/// Where remote keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteSource {
    /// A JWKS URL.
    JwksUrl(String),
    /// An issuer whose `/.well-known/openid-configuration` names the `jwks_uri`.
    Discovery(String),
}

enum KeyInput {
    Pem {
        pem: Vec<u8>,
        kid: Option<String>,
        key: &'static str,
    },
    Secret {
        secret: Vec<u8>,
        kid: Option<String>,
    },
    Jwks(Vec<u8>),
}

/// Builder for [`JwtVerifier`].
pub struct JwtVerifierBuilder {
    inputs: Vec<KeyInput>,
    remote: Option<RemoteSource>,
    issuers: Option<Vec<String>>,
    audiences: Option<Vec<String>>,
    leeway: Duration,
    allowed: Option<Vec<Algorithm>>,
    clock: SharedClock,
    cooldown: Duration,
    refresh_interval: Duration,
    fetch_timeout: Duration,
    copy_claims: Vec<String>,
    max_len: usize,
    http: Option<reqwest::Client>,
}

impl fmt::Debug for JwtVerifierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifierBuilder")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Starts a builder.
    pub fn builder() -> JwtVerifierBuilder {
        JwtVerifierBuilder {
            inputs: Vec::new(),
            remote: None,
            issuers: None,
            audiences: None,
            leeway: Duration::from_secs(30),
            allowed: None,
            clock: system_clock(),
            cooldown: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(300),
            fetch_timeout: Duration::from_secs(5),
            copy_claims: Vec::new(),
            max_len: 8 * 1024,
            http: None,
        }
    }

    /// The current key set (static keys, or the last good remote set).
    pub fn key_set(&self) -> Arc<KeySet> {
        match &self.inner.keys {
            Keys::Static(s) => s.clone(),
            Keys::Remote(r) => r.current.load_full(),
        }
    }

    /// Maximum token length accepted.
    pub fn max_len(&self) -> usize {
        self.inner.max_len
    }

    /// Verifies a token with the keys at hand (no fetch).
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let set = match &self.inner.keys {
            Keys::Static(s) => s.clone(),
            Keys::Remote(r) => {
                let g = r.current.load();
                return self.verify_with(&g, token);
            }
        };
        self.verify_with(&set, token)
    }

    /// Verifies a token; on an unknown key, refreshes remote keys (at most once per
    /// cool-down, never concurrently) and tries again.
    pub async fn verify_refreshing(&self, token: &str) -> Result<Principal, TokenError> {
        match self.verify(token) {
            Err(TokenError::UnknownKey) => {}
            other => return other,
        }
        let Keys::Remote(r) = &self.inner.keys else {
            return Err(TokenError::UnknownKey);
        };
        if r.clone().refresh_on_unknown_kid().await {
            self.verify(token)
        } else {
            Err(TokenError::UnknownKey)
        }
    }

    /// Whether an unknown key could be fetched now (remote keys, cool-down elapsed).
    pub fn may_refresh(&self) -> bool {
        match &self.inner.keys {
            Keys::Static(_) => false,
            Keys::Remote(r) => r.cooldown_elapsed(),
        }
    }

    /// Waits (up to `timeout`) until remote keys were fetched once. Static keys are ready
    /// at once. Returns whether keys are available.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let Keys::Remote(r) = &self.inner.keys else {
            return true;
        };
        r.clone().ensure_background();
        let _ = tokio::time::timeout(timeout, async {
            loop {
                if r.fetched.load(Ordering::Acquire) {
                    return;
                }
                if r.clone().fetch_and_store().await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        r.fetched.load(Ordering::Acquire)
    }

    /// Verifies `token` with one pass over each part: the header and the claims are decoded
    /// and parsed once, the signature is checked by jsonwebtoken's crypto provider, and the
    /// claims are validated here (the same checks `jsonwebtoken::decode` makes with the
    /// layer's `Validation`: algorithm allowed for the key, `iss`/`aud` present and matching
    /// when configured; plus `exp` required and `nbf` against the layer's clock).
    fn verify_with(&self, set: &KeySet, token: &str) -> Result<Principal, TokenError> {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let inner = &*self.inner;
        if token.len() > inner.max_len {
            return Err(TokenError::Invalid);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Invalid);
        };
        if header_b64.len() > 2048 {
            return Err(TokenError::Invalid);
        }
        let mut header_buf = [0u8; 1536];
        let n = URL_SAFE_NO_PAD
            .decode_slice(header_b64, &mut header_buf)
            .map_err(|_| TokenError::Invalid)?;
        let header: HeaderLite =
            serde_json::from_slice(&header_buf[..n]).map_err(|_| TokenError::Invalid)?;
        if header.crit.is_some() {
            return Err(TokenError::Invalid);
        }
        // `none` (any case) does not parse as an algorithm
        let alg: Algorithm = header
            .alg
            .as_deref()
            .and_then(|a| a.parse().ok())
            .ok_or(TokenError::Invalid)?;
        if let Some(typ) = &header.typ
            && !["jwt", "at+jwt", "application/at+jwt"]
                .iter()
                .any(|t| typ.eq_ignore_ascii_case(t))
        {
            return Err(TokenError::Invalid);
        }
        let key = match &header.kid {
            Some(kid) => {
                if kid.len() > 256 || kid.chars().any(char::is_control) {
                    return Err(TokenError::Invalid);
                }
                match set.by_kid.get(kid.as_ref()) {
                    Some(k) => k,
                    None => return Err(TokenError::UnknownKey),
                }
            }
            None => {
                // no kid: only unambiguous when the set holds exactly one key
                let mut all = set.anonymous.iter().chain(set.by_kid.values());
                match (all.next(), all.next()) {
                    (Some(k), None) => k,
                    (None, _) => return Err(TokenError::UnknownKey),
                    _ => return Err(TokenError::Invalid),
                }
            }
        };
        // the key fixes the algorithms: its family, and the allow-list
        if alg.family() != key.key.family() || !key.algorithms.contains(&alg) {
            return Err(TokenError::Invalid);
        }
        let message = &token[..header_b64.len() + 1 + payload_b64.len()];
        if !jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key.key, alg)
            .unwrap_or(false)
        {
            return Err(TokenError::Invalid);
        }
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TokenError::Invalid)?;
        let c: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Invalid)?;
        if let Some(issuers) = &inner.checks.issuers
            && !c.iss.intersects(issuers)
        {
            return Err(TokenError::Invalid);
        }
        if let Some(audiences) = &inner.checks.audiences
            && !c.aud.intersects(audiences)
        {
            return Err(TokenError::Invalid);
        }
        let now = inner
            .clock
            .wall()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let leeway = inner.checks.leeway as f64;
        let exp = c.exp.ok_or(TokenError::Invalid)?;
        if !exp.is_finite() || exp + leeway <= now {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = c.nbf
            && (!nbf.is_finite() || nbf - leeway > now)
        {
            return Err(TokenError::NotYetValid);
        }
        let id = c
            .sub
            .as_deref()
            .or(c.client_id.as_deref())
            .or(c.azp.as_deref())
            .ok_or(TokenError::Invalid)?;
        let mut p = Principal::new(id, CredentialKind::Jwt);
        if let Some(s) = c.sub.as_deref() {
            p = p.with_subject(s);
        }
        if let Some(cid) = c.client_id.as_deref().or(c.azp.as_deref()) {
            p = p.with_client_id(cid);
        }
        if let Some(s) = &c.scope {
            p = p.with_scopes(s.split_ascii_whitespace());
        }
        match &c.scp {
            Strs::Absent => {}
            Strs::One(s) => p = p.with_scopes(s.split_ascii_whitespace()),
            Strs::Many(v) => p = p.with_scopes(v.iter().map(|s| s.as_ref())),
            Strs::Other => return Err(TokenError::Invalid),
        }
        if !inner.copy_claims.is_empty()
            && let Ok(all) =
                serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&payload)
        {
            for name in &inner.copy_claims {
                if let Some(v) = all.get(name) {
                    p = p.with_claim(name.clone(), v.clone());
                }
            }
        }
        Ok(p)
    }
}

impl JwtVerifierBuilder {
    /// Adds an RSA public key in PEM (`-----BEGIN PUBLIC KEY-----`), optionally with a kid.
    pub fn rsa_pem(mut self, pem: impl Into<Vec<u8>>, kid: Option<&str>) -> Self {
        self.inputs.push(KeyInput::Pem {
            pem: pem.into(),
            kid: kid.map(str::to_owned),
            key: "rsa",
        });
        self
    }
    /// Adds an EC (P-256/P-384) public key in PEM.
    pub fn ec_pem(mut self, pem: impl Into<Vec<u8>>, kid: Option<&str>) -> Self {
        self.inputs.push(KeyInput::Pem {
            pem: pem.into(),
            kid: kid.map(str::to_owned),
            key: "ec",
        });
        self
    }
    /// Adds an Ed25519 public key in PEM.
    pub fn ed_pem(mut self, pem: impl Into<Vec<u8>>, kid: Option<&str>) -> Self {
        self.inputs.push(KeyInput::Pem {
            pem: pem.into(),
            kid: kid.map(str::to_owned),
            key: "ed",
        });
        self
    }
    /// Adds an HMAC secret (HS256/384/512 only; at least 32 bytes).
    pub fn hmac_secret(mut self, secret: impl Into<Vec<u8>>, kid: Option<&str>) -> Self {
        self.inputs.push(KeyInput::Secret {
            secret: secret.into(),
            kid: kid.map(str::to_owned),
        });
        self
    }
    /// Adds the keys of a static JWKS document (JSON).
    pub fn jwks_json(mut self, json: impl Into<Vec<u8>>) -> Self {
        self.inputs.push(KeyInput::Jwks(json.into()));
        self
    }
    /// Fetches keys from a JWKS URL (cached, refreshed).
    pub fn jwks_url(mut self, url: impl Into<String>) -> Self {
        self.remote = Some(RemoteSource::JwksUrl(url.into()));
        self
    }
    /// Finds the JWKS through OIDC discovery of this issuer (also sets the expected issuer
    /// unless one was configured).
    pub fn discovery(mut self, issuer: impl Into<String>) -> Self {
        self.remote = Some(RemoteSource::Discovery(issuer.into()));
        self
    }
    /// Accepted issuers (`iss` then required).
    pub fn issuer(mut self, iss: impl Into<String>) -> Self {
        self.issuers.get_or_insert_with(Vec::new).push(iss.into());
        self
    }
    /// Accepted audiences (`aud` then required).
    pub fn audience(mut self, aud: impl Into<String>) -> Self {
        self.audiences.get_or_insert_with(Vec::new).push(aud.into());
        self
    }
    /// Clock-skew leeway for `exp`/`nbf` (default 30 s, at most 5 min).
    pub fn leeway(mut self, d: Duration) -> Self {
        self.leeway = d;
        self
    }
    /// Restricts the accepted algorithms (default: all asymmetric ones, plus HS* for
    /// configured secrets).
    pub fn algorithms(mut self, algs: impl IntoIterator<Item = Algorithm>) -> Self {
        self.allowed = Some(algs.into_iter().collect());
        self
    }
    /// The clock for `exp`/`nbf` and the refresh cool-down.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }
    /// Minimum time between two fetches caused by unknown kids (default 30 s).
    pub fn refresh_cooldown(mut self, d: Duration) -> Self {
        self.cooldown = d;
        self
    }
    /// Period of the background refresh (default 5 min).
    pub fn refresh_interval(mut self, d: Duration) -> Self {
        self.refresh_interval = d;
        self
    }
    /// Timeout of one fetch (default 5 s).
    pub fn fetch_timeout(mut self, d: Duration) -> Self {
        self.fetch_timeout = d;
        self
    }
    /// Claims copied into the principal's selected claims (e.g. `tenant`).
    pub fn copy_claim(mut self, name: impl Into<String>) -> Self {
        self.copy_claims.push(name.into());
        self
    }
    /// Maximum token length (default 8 KiB); longer tokens are refused unparsed.
    pub fn max_token_len(mut self, n: usize) -> Self {
        self.max_len = n;
        self
    }
    /// The HTTP client for remote keys.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Builds the verifier. Remote keys are fetched in the background (started at once
    /// when called inside a tokio runtime, else on first use): this never blocks.
    pub fn build(self) -> Result<JwtVerifier, ConfigError> {
        if self.leeway > MAX_LEEWAY {
            return Err(ConfigError::invalid(
                "auth.jwt.leeway_secs",
                "the leeway must be at most 300 seconds",
            ));
        }
        let has_secret = self
            .inputs
            .iter()
            .any(|i| matches!(i, KeyInput::Secret { .. }));
        let allowed = self.allowed.clone().unwrap_or_else(|| {
            let mut v = vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
                Algorithm::ES256,
                Algorithm::ES384,
                Algorithm::EdDSA,
            ];
            if has_secret {
                v.extend([Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]);
            }
            v
        });
        let mut issuers = self.issuers.clone();
        if let (None, Some(RemoteSource::Discovery(iss))) = (&issuers, &self.remote) {
            issuers = Some(vec![iss.clone()]);
        }
        let checks = Checks {
            issuers,
            audiences: self.audiences.clone(),
            leeway: self.leeway.as_secs(),
            allowed,
        };
        let mut set = KeySet::default();
        for (i, input) in self.inputs.into_iter().enumerate() {
            let key_name = format!("auth.jwt.keys[{i}]");
            let (dk, kid) = match input {
                KeyInput::Pem { pem, kid, key } => {
                    let dk = match key {
                        "rsa" => DecodingKey::from_rsa_pem(&pem),
                        "ec" => DecodingKey::from_ec_pem(&pem),
                        _ => DecodingKey::from_ed_pem(&pem),
                    }
                    .map_err(|e| ConfigError::invalid(&key_name, format!("invalid PEM: {e}")))?;
                    (dk, kid)
                }
                KeyInput::Secret { secret, kid } => {
                    if secret.len() < 32 {
                        return Err(ConfigError::invalid(
                            &key_name,
                            "an HMAC secret must be at least 32 bytes",
                        ));
                    }
                    (DecodingKey::from_secret(&secret), kid)
                }
                KeyInput::Jwks(doc) => {
                    let s = checks
                        .key_set_from_jwks(&doc, true)
                        .map_err(|e| ConfigError::invalid(&key_name, e))?;
                    set.by_kid.extend(s.by_kid);
                    set.anonymous.extend(s.anonymous);
                    continue;
                }
            };
            let vk = checks.key(dk, None).ok_or_else(|| {
                ConfigError::invalid(&key_name, "no allowed algorithm fits this key")
            })?;
            match kid {
                Some(k) => {
                    set.by_kid.insert(k, vk);
                }
                None => set.anonymous.push(vk),
            }
        }
        let keys = match self.remote {
            None => {
                if set.is_empty() {
                    return Err(ConfigError::invalid(
                        "auth.jwt",
                        "no verification key configured (PEM, secret, JWKS, jwks_url or discovery)",
                    ));
                }
                Keys::Static(Arc::new(set))
            }
            Some(source) => {
                let http = match self.http {
                    Some(c) => c,
                    None => reqwest::Client::builder()
                        .timeout(self.fetch_timeout)
                        .redirect(reqwest::redirect::Policy::none())
                        .build()
                        .map_err(|e| ConfigError::invalid("auth.jwt", e.to_string()))?,
                };
                let remote = Arc::new(RemoteKeys {
                    source,
                    http,
                    checks: checks.clone(),
                    current: ArcSwap::from_pointee(set),
                    last_attempt: AtomicU64::new(0),
                    clock: self.clock.clone(),
                    cooldown: self.cooldown,
                    interval: self.refresh_interval,
                    fetch_timeout: self.fetch_timeout,
                    lock: tokio::sync::Mutex::new(()),
                    background: AtomicBool::new(false),
                    fetched: AtomicBool::new(false),
                    fetches: AtomicU64::new(0),
                });
                if tokio::runtime::Handle::try_current().is_ok() {
                    remote.clone().ensure_background();
                }
                Keys::Remote(remote)
            }
        };
        Ok(JwtVerifier {
            inner: Arc::new(VerifierInner {
                keys,
                checks,
                clock: self.clock,
                copy_claims: self.copy_claims,
                max_len: self.max_len,
            }),
        })
    }
}

struct RemoteKeys {
    source: RemoteSource,
    http: reqwest::Client,
    checks: Checks,
    current: ArcSwap<KeySet>,
    /// Monotonic milliseconds + 1 of the last fetch attempt (0: never).
    last_attempt: AtomicU64,
    clock: SharedClock,
    cooldown: Duration,
    interval: Duration,
    fetch_timeout: Duration,
    lock: tokio::sync::Mutex<()>,
    background: AtomicBool,
    fetched: AtomicBool,
    fetches: AtomicU64,
}

impl RemoteKeys {
    fn now_ms(&self) -> u64 {
        self.clock.monotonic().as_millis() as u64 + 1
    }

    fn cooldown_elapsed(&self) -> bool {
        let last = self.last_attempt.load(Ordering::Acquire);
        last == 0 || self.now_ms().saturating_sub(last) >= self.cooldown.as_millis() as u64
    }

    /// Refresh caused by an unknown kid: at most once per cool-down. Returns whether a
    /// fetch (by this call or a concurrent one) produced a new key set.
    async fn refresh_on_unknown_kid(self: Arc<Self>) -> bool {
        self.clone().ensure_background();
        if !self.cooldown_elapsed() {
            return false;
        }
        let before = self.fetches.load(Ordering::Acquire);
        let _guard = self.lock.lock().await;
        if self.fetches.load(Ordering::Acquire) != before {
            return true; // another request fetched while we waited
        }
        if !self.cooldown_elapsed() {
            return false;
        }
        self.fetch_locked().await
    }

    async fn fetch_and_store(self: Arc<Self>) -> bool {
        let _guard = self.lock.lock().await;
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> bool {
        self.last_attempt.store(self.now_ms(), Ordering::Release);
        match tokio::time::timeout(self.fetch_timeout, self.fetch()).await {
            Ok(Ok(set)) => {
                tracing::debug!(keys = set.len(), source = ?self.source, "auth: JWKS refreshed");
                self.current.store(Arc::new(set));
                self.fetched.store(true, Ordering::Release);
                self.fetches.fetch_add(1, Ordering::AcqRel);
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(source = ?self.source, error = %e, "auth: JWKS fetch failed; keeping the last good keys");
                false
            }
            Err(_) => {
                tracing::warn!(source = ?self.source, "auth: JWKS fetch timed out; keeping the last good keys");
                false
            }
        }
    }

    async fn get_bytes(&self, url: &str) -> Result<bytes::Bytes, String> {
        let res = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("request failed: {}", e.without_url()))?;
        if !res.status().is_success() {
            return Err(format!("status {}", res.status().as_u16()));
        }
        let body = res
            .bytes()
            .await
            .map_err(|e| format!("body: {}", e.without_url()))?;
        if body.len() > 512 * 1024 {
            return Err("document too large".into());
        }
        Ok(body)
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let jwks_url = match &self.source {
            RemoteSource::JwksUrl(u) => u.clone(),
            RemoteSource::Discovery(issuer) => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let doc = self.get_bytes(&url).await?;
                #[derive(Deserialize)]
                struct Discovery {
                    issuer: String,
                    jwks_uri: String,
                }
                let d: Discovery = serde_json::from_slice(&doc)
                    .map_err(|e| format!("invalid discovery document: {e}"))?;
                if d.issuer != *issuer {
                    return Err("the discovery document names another issuer".into());
                }
                d.jwks_uri
            }
        };
        let doc = self.get_bytes(&jwks_url).await?;
        let set = self.checks.key_set_from_jwks(&doc, false)?;
        if set.is_empty() {
            return Err("the JWKS holds no usable key".into());
        }
        Ok(set)
    }

    fn ensure_background(self: Arc<Self>) {
        if self.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.background.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(&self);
        let interval = self.interval;
        drop(self);
        handle.spawn(async move {
            // first fetch at once, then periodically (sooner while nothing was fetched)
            let mut first = true;
            loop {
                let Some(this) = weak.upgrade() else { return };
                let wait = if first {
                    Duration::ZERO
                } else if this.fetched.load(Ordering::Acquire) {
                    interval
                } else {
                    this.cooldown.max(Duration::from_secs(1)).min(interval)
                };
                drop(this);
                first = false;
                tokio::time::sleep(wait).await;
                let Some(this) = weak.upgrade() else { return };
                this.fetch_and_store().await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier(clock: &ManualClock) -> JwtVerifier {
        JwtVerifier::builder()
            .hmac_secret(SECRET, Some("k1"))
            .issuer("https://issuer.example")
            .audience("api")
            .clock(Arc::new(clock.clone()))
            .build()
            .unwrap()
    }

    fn token(claims: serde_json::Value, kid: Option<&str>) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.map(str::to_owned);
        encode(&h, &claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    #[test]
    fn valid_token_yields_principal_with_scopes() {
        let clock = ManualClock::at_unix(1_000_000);
        let v = verifier(&clock);
        let t = token(
            serde_json::json!({"sub":"u1","client_id":"c1","iss":"https://issuer.example","aud":"api","exp":1_000_100,"scope":"a b","scp":["c"]}),
            Some("k1"),
        );
        let p = v.verify(&t).unwrap();
        assert_eq!(p.id(), "u1");
        assert_eq!(p.client_id(), Some("c1"));
        assert!(p.has_scope("a") && p.has_scope("b") && p.has_scope("c"));
    }

    #[test]
    fn time_and_claims_checks() {
        let clock = ManualClock::at_unix(1_000_000);
        let v = verifier(&clock);
        let base = serde_json::json!({"sub":"u1","iss":"https://issuer.example","aud":"api","exp":1_000_100});
        let with = |k: &str, val: serde_json::Value| {
            let mut c = base.clone();
            c[k] = val;
            token(c, Some("k1"))
        };
        clock.advance(Duration::from_secs(129));
        assert!(v.verify(&with("sub", "u1".into())).is_ok());
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            v.verify(&with("sub", "u1".into())),
            Err(TokenError::Expired)
        );
        let clock = ManualClock::at_unix(1_000_000);
        let v = verifier(&clock);
        assert_eq!(
            v.verify(&with("nbf", 1_000_040.into())),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            v.verify(&with("iss", "https://evil".into())),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            v.verify(&with("aud", "other".into())),
            Err(TokenError::Invalid)
        );
        let mut no_exp = base.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            v.verify(&token(no_exp, Some("k1"))),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            v.verify(&token(base.clone(), Some("k2"))),
            Err(TokenError::UnknownKey)
        );
        // aud and iss: string or array, at least one configured value; present when configured
        assert!(
            v.verify(&with("aud", serde_json::json!(["x", "api"])))
                .is_ok()
        );
        for bad in [
            serde_json::json!(["x", "y"]),
            serde_json::json!([]),
            serde_json::json!(["api", 7]),
            serde_json::json!(7),
            serde_json::json!({"api": true}),
            serde_json::Value::Null,
        ] {
            assert_eq!(
                v.verify(&with("aud", bad.clone())),
                Err(TokenError::Invalid),
                "aud {bad}"
            );
            assert_eq!(
                v.verify(&with("iss", bad.clone())),
                Err(TokenError::Invalid),
                "iss {bad}"
            );
        }
        for claim in ["aud", "iss"] {
            let mut c = base.clone();
            c.as_object_mut().unwrap().remove(claim);
            assert_eq!(
                v.verify(&token(c, Some("k1"))),
                Err(TokenError::Invalid),
                "{claim}"
            );
        }
        // escaped strings are decoded (an owned copy)
        let p = v.verify(&with("sub", "u\"1".into())).unwrap();
        assert_eq!(p.id(), "u\"1");
        // scp: text, list or null; another type is refused
        assert!(v.verify(&with("scp", serde_json::Value::Null)).is_ok());
        assert_eq!(v.verify(&with("scp", 5.into())), Err(TokenError::Invalid));
        assert_eq!(v.verify(&with("sub", 5.into())), Err(TokenError::Invalid));
        // without configured audiences, aud of any shape is ignored
        let open = JwtVerifier::builder()
            .hmac_secret(SECRET, Some("k1"))
            .clock(Arc::new(clock.clone()))
            .build()
            .unwrap();
        assert!(
            open.verify(&with("aud", serde_json::json!({"x": [1]})))
                .is_ok()
        );
        // the header's algorithm must be one the key verifies; tokens have three parts
        let mut h = Header::new(Algorithm::HS512);
        h.kid = Some("k1".into());
        let t = encode(&h, &base, &EncodingKey::from_secret(SECRET)).unwrap();
        assert!(v.verify(&t).is_ok(), "HS512 is in the HMAC family");
        let restricted = JwtVerifier::builder()
            .hmac_secret(SECRET, Some("k1"))
            .algorithms([Algorithm::HS256])
            .clock(Arc::new(clock.clone()))
            .build()
            .unwrap();
        assert_eq!(restricted.verify(&t), Err(TokenError::Invalid));
        let good = token(base.clone(), Some("k1"));
        assert_eq!(v.verify(&format!("{good}.x")), Err(TokenError::Invalid));
        let (head, _) = good.rsplit_once('.').unwrap();
        assert_eq!(v.verify(head), Err(TokenError::Invalid));
        assert_eq!(v.verify(&format!("{head}.")), Err(TokenError::Invalid));
    }

    #[test]
    fn leeway_is_bounded() {
        let e = JwtVerifier::builder()
            .hmac_secret(SECRET, None)
            .leeway(Duration::from_secs(3600))
            .build()
            .unwrap_err();
        assert!(e.to_string().starts_with("auth.jwt.leeway_secs"));
    }
}
