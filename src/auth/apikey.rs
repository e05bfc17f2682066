//! API keys: format, generation, hashing and stores.
//!
//! A key looks like `tsk_7Hq2mX9a_<40 random base62 characters><6 checksum characters>`:
//! - a short lowercase **prefix** (`tsk` by default) so users and secret scanners recognise it;
//! - a public **key id** (8 base62 characters) used to look the key up;
//! - at least 32 (40 by default) **random** base62 characters (~238 bits);
//! - a **checksum**: CRC32 of everything before it, as 6 base62 characters, so a mistyped
//!   or forged key is rejected before any store lookup.
//!
//! The server stores only a hash of the whole key: SHA-256 (`sha256:<base64url>`) or
//! HMAC-SHA-256 with a server secret (`hmac-sha256:<base64url>`), compared in constant time.
//!
//! ```
//! use tower_shield::auth::{ApiKeyFormat, KeyHasher};
//!
//! let format = ApiKeyFormat::default();
//! let key = format.generate();
//! let parsed = format.parse(key.secret()).unwrap();
//! assert_eq!(parsed.key_id(), key.key_id());
//! let hasher = KeyHasher::sha256();
//! let stored = hasher.hash(key.secret());
//! assert!(stored.starts_with("sha256:"));
//! assert!(hasher.verify(key.secret(), &hasher.parse_hash(&stored, "hash").unwrap()));
//! // one changed character breaks the checksum
//! let mut typo = key.secret().to_owned();
//! let last = typo.pop().unwrap();
//! typo.push(if last == 'a' { 'b' } else { 'a' });
//! assert!(format.parse(&typo).is_none());
//! ```

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ConfigError;
use crate::principal::{CredentialKind, Principal};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const CHECKSUM_LEN: usize = 6;
/// Length of a generated key id.
pub const KEY_ID_LEN: usize = 8;
/// Minimum number of random characters in a key.
pub const MIN_SECRET_LEN: usize = 32;
const MAX_KEY_LEN: usize = 256;

fn is_base62(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// `BASE62_BYTE[b]` is 1 for base62 bytes, 0 otherwise.
static BASE62_BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = (i as u8).is_ascii_alphanumeric() as u8;
        i += 1;
    }
    t
};

/// Whether every byte is base62: one table load per byte, no early exit and no branch.
fn all_base62(s: &[u8]) -> bool {
    s.iter().fold(1u8, |ok, &b| ok & BASE62_BYTE[b as usize]) == 1
}

fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(body);
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

fn random_base62(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| BASE62[rng.random_range(0..62)] as char)
        .collect()
}

/// The shape of API keys: prefix and length of the random part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyFormat {
    prefix: String,
    secret_len: usize,
}

impl Default for ApiKeyFormat {
    fn default() -> Self {
        Self {
            prefix: "tsk".into(),
            secret_len: 40,
        }
    }
}

/// A parsed (well-formed, checksum-valid) API key. Borrowed from the presented key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    full: &'a str,
    key_id: &'a str,
}

impl<'a> ParsedKey<'a> {
    /// The key id (public).
    pub fn key_id(&self) -> &'a str {
        self.key_id
    }
    /// The whole key (secret).
    pub fn full(&self) -> &'a str {
        self.full
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A newly generated key: shown once to its owner, then only its hash is kept.
#[derive(Clone)]
pub struct GeneratedKey {
    secret: String,
    key_id: String,
}

impl GeneratedKey {
    /// The full key (give it to the client once; never log it).
    pub fn secret(&self) -> &str {
        &self.secret
    }
    /// The public key id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl ApiKeyFormat {
    /// A format with a custom prefix (1–12 lowercase ASCII letters or digits) and random
    /// length (32–128 characters).
    pub fn new(prefix: &str, secret_len: usize) -> Result<Self, ConfigError> {
        if prefix.is_empty()
            || prefix.len() > 12
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(ConfigError::invalid(
                "api_keys.prefix",
                "expected 1 to 12 lowercase ASCII letters or digits",
            ));
        }
        if !(MIN_SECRET_LEN..=128).contains(&secret_len) {
            return Err(ConfigError::invalid(
                "api_keys.secret_length",
                "expected 32 to 128 random characters",
            ));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            secret_len,
        })
    }

    /// The prefix (`tsk`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Generates a key with a random key id.
    pub fn generate(&self) -> GeneratedKey {
        self.generate_with_id(&random_base62(KEY_ID_LEN))
            .expect("random key ids are valid")
    }

    /// Generates a key with a chosen key id (4–32 base62 characters).
    pub fn generate_with_id(&self, key_id: &str) -> Result<GeneratedKey, ConfigError> {
        if !(4..=32).contains(&key_id.len()) || !key_id.bytes().all(is_base62) {
            return Err(ConfigError::invalid(
                "key_id",
                "expected 4 to 32 base62 characters",
            ));
        }
        let mut s = format!(
            "{}_{}_{}",
            self.prefix,
            key_id,
            random_base62(self.secret_len)
        );
        let sum = checksum(s.as_bytes());
        s.push_str(std::str::from_utf8(&sum).unwrap_or("000000"));
        Ok(GeneratedKey {
            secret: s,
            key_id: key_id.to_owned(),
        })
    }

    /// Whether a presented credential claims to be one of our keys (starts with `prefix_`).
    pub fn looks_like_key(&self, s: &str) -> bool {
        s.len() > self.prefix.len()
            && s.as_bytes()[self.prefix.len()] == b'_'
            && s.starts_with(&self.prefix)
    }

    /// Parses a presented key: shape and checksum. `None` when it is not a valid key.
    pub fn parse<'a>(&self, s: &'a str) -> Option<ParsedKey<'a>> {
        if s.len() > MAX_KEY_LEN || !self.looks_like_key(s) {
            return None;
        }
        let rest = &s[self.prefix.len() + 1..];
        let (key_id, tail) = rest.split_once('_')?;
        if !(4..=32).contains(&key_id.len()) || !all_base62(key_id.as_bytes()) {
            return None;
        }
        if tail.len() < MIN_SECRET_LEN + CHECKSUM_LEN || !all_base62(tail.as_bytes()) {
            return None;
        }
        let (body, sum) = s.split_at(s.len() - CHECKSUM_LEN);
        if checksum(body.as_bytes()) != sum.as_bytes() {
            return None;
        }
        Some(ParsedKey { full: s, key_id })
    }
}

/// A stored key hash.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredHash([u8; 32]);

impl fmt::Debug for StoredHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoredHash(..)")
    }
}

/// Hashes keys for storage: SHA-256, or HMAC-SHA-256 with a server secret (a leaked hash
/// table is then useless without the secret).
#[derive(Clone)]
pub struct KeyHasher {
    hmac: Option<Hmac<Sha256>>,
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.hmac.is_some() {
            "KeyHasher(hmac-sha256)"
        } else {
            "KeyHasher(sha256)"
        })
    }
}

impl Default for KeyHasher {
    fn default() -> Self {
        Self::sha256()
    }
}

impl KeyHasher {
    /// Plain SHA-256 (keys have ≥190 bits of entropy, so this is not brute-forceable).
    pub fn sha256() -> Self {
        Self { hmac: None }
    }

    /// HMAC-SHA-256 keyed with a server secret (at least 32 bytes).
    pub fn hmac_sha256(secret: &[u8]) -> Result<Self, ConfigError> {
        if secret.len() < 32 {
            return Err(ConfigError::invalid(
                "api_keys.hmac_secret",
                "the server secret must be at least 32 bytes",
            ));
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret)
            .map_err(|_| ConfigError::invalid("api_keys.hmac_secret", "invalid secret"))?;
        Ok(Self { hmac: Some(mac) })
    }

    fn scheme(&self) -> &'static str {
        if self.hmac.is_some() {
            "hmac-sha256"
        } else {
            "sha256"
        }
    }

    /// The raw digest of a key.
    pub fn digest(&self, key: &str) -> StoredHash {
        let out: [u8; 32] = match &self.hmac {
            Some(mac) => {
                let mut m = mac.clone();
                m.update(key.as_bytes());
                m.finalize().into_bytes().into()
            }
            None => Sha256::digest(key.as_bytes()).into(),
        };
        StoredHash(out)
    }

    /// The hash to store, `sha256:<base64url>` or `hmac-sha256:<base64url>`.
    pub fn hash(&self, key: &str) -> String {
        format!(
            "{}:{}",
            self.scheme(),
            URL_SAFE_NO_PAD.encode(self.digest(key).0)
        )
    }

    /// Parses a stored hash written by [`hash`](Self::hash) with the same scheme.
    pub fn parse_hash(&self, stored: &str, key: &str) -> Result<StoredHash, ConfigError> {
        let (scheme, b64) = stored.split_once(':').ok_or_else(|| {
            ConfigError::invalid(
                key,
                "expected \"sha256:<base64url>\" or \"hmac-sha256:<base64url>\"",
            )
        })?;
        if scheme != self.scheme() {
            return Err(ConfigError::invalid(
                key,
                format!(
                    "hash scheme {scheme:?} does not match the configured hasher ({})",
                    self.scheme()
                ),
            ));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(b64.trim_end_matches('='))
            .map_err(|_| ConfigError::invalid(key, "the hash is not valid base64url"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| ConfigError::invalid(key, "the hash must be 32 bytes"))?;
        Ok(StoredHash(arr))
    }

    /// Whether `key` matches the stored hash (constant-time comparison).
    pub fn verify(&self, key: &str, stored: &StoredHash) -> bool {
        // XOR-accumulate in words, then one constant-time comparison: no data-dependent
        // branch, and cheaper than a byte-wise `ct_eq`
        let (a, b) = (self.digest(key).0, &stored.0);
        let diff = (0..4).fold(0u64, |acc, i| {
            let w =
                |h: &[u8; 32]| u64::from_ne_bytes(h[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
            acc | (w(&a) ^ w(b))
        });
        diff.ct_eq(&0).into()
    }
}

/// What the server knows about one key. Never holds the key itself.
#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    /// Public key id.
    pub key_id: String,
    /// Hash of the key.
    pub hash: StoredHash,
    /// Human name (`"checkout service"`).
    pub name: Option<String>,
    /// The client owning the key; several keys of one client share quotas and rotate.
    pub client_id: Option<String>,
    /// Granted scopes.
    pub scopes: BTreeSet<String>,
    /// Plan (tier) for quotas.
    pub plan: Option<String>,
    /// Tenant.
    pub tenant: Option<String>,
    /// Expiry (wall time).
    pub expires_at: Option<SystemTime>,
    /// Disabled (revoked) keys are refused.
    pub disabled: bool,
    principal: OnceLock<Principal>,
}

impl ApiKeyRecord {
    /// A record for a key id and stored hash.
    pub fn new(key_id: impl Into<String>, hash: StoredHash) -> Self {
        Self {
            key_id: key_id.into(),
            hash,
            name: None,
            client_id: None,
            scopes: BTreeSet::new(),
            plan: None,
            tenant: None,
            expires_at: None,
            disabled: false,
            principal: OnceLock::new(),
        }
    }

    /// The principal this key proves (built once per record): id is the client id when
    /// set (so rotated keys of one client share throttle and quota state), else the key id.
    pub fn principal(&self) -> Principal {
        self.principal
            .get_or_init(|| {
                let id = self.client_id.as_deref().unwrap_or(&self.key_id);
                let mut p = Principal::new(id, CredentialKind::ApiKey)
                    .with_key_id(&self.key_id)
                    .with_scopes(self.scopes.iter().cloned());
                if let Some(c) = &self.client_id {
                    p = p.with_client_id(c);
                }
                if let Some(pl) = &self.plan {
                    p = p.with_plan(pl);
                }
                if let Some(t) = &self.tenant {
                    p = p.with_tenant(t);
                }
                p
            })
            .clone()
    }
    /// Sets the client id.
    pub fn client_id(mut self, v: impl Into<String>) -> Self {
        self.client_id = Some(v.into());
        self
    }
    /// Sets the name.
    pub fn name(mut self, v: impl Into<String>) -> Self {
        self.name = Some(v.into());
        self
    }
    /// Adds scopes.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes.extend(scopes.into_iter().map(Into::into));
        self
    }
    /// Sets the plan.
    pub fn plan(mut self, v: impl Into<String>) -> Self {
        self.plan = Some(v.into());
        self
    }
    /// Sets the tenant.
    pub fn tenant(mut self, v: impl Into<String>) -> Self {
        self.tenant = Some(v.into());
        self
    }
    /// Sets the expiry.
    pub fn expires_at(mut self, t: SystemTime) -> Self {
        self.expires_at = Some(t);
        self
    }
    /// Disables the key.
    pub fn disabled(mut self, d: bool) -> Self {
        self.disabled = d;
        self
    }
}

/// Looks keys up by id.
///
/// The lookup is synchronous: it is on every request's path, so implementations keep their
/// data in memory (a database-backed store would refresh an in-memory snapshot, e.g. with
/// `arc-swap`).
pub trait KeyStore: Send + Sync + 'static {
    /// The record for a key id.
    fn get(&self, key_id: &str) -> Option<Arc<ApiKeyRecord>>;
}

/// An in-memory key store (from configuration or code).
#[derive(Debug, Default)]
pub struct MemoryKeyStore {
    keys: HashMap<String, Arc<ApiKeyRecord>>,
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a record (replacing one with the same key id).
    pub fn insert(&mut self, record: ApiKeyRecord) {
        self.keys.insert(record.key_id.clone(), Arc::new(record));
    }
    /// Adds a record, builder style.
    pub fn with(mut self, record: ApiKeyRecord) -> Self {
        self.insert(record);
        self
    }
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl KeyStore for MemoryKeyStore {
    fn get(&self, key_id: &str) -> Option<Arc<ApiKeyRecord>> {
        self.keys.get(key_id).cloned()
    }
}

impl<K: KeyStore> KeyStore for Arc<K> {
    fn get(&self, key_id: &str) -> Option<Arc<ApiKeyRecord>> {
        (**self).get(key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_have_the_documented_shape() {
        let f = ApiKeyFormat::default();
        for _ in 0..100 {
            let k = f.generate();
            let s = k.secret();
            assert!(s.starts_with("tsk_"));
            assert_eq!(s.len(), 4 + KEY_ID_LEN + 1 + 40 + CHECKSUM_LEN);
            let p = f.parse(s).unwrap();
            assert_eq!(p.key_id(), k.key_id());
        }
        assert!(!format!("{:?}", f.generate()).contains("tsk_"));
    }

    #[test]
    fn every_single_character_change_is_caught_by_the_checksum() {
        let f = ApiKeyFormat::default();
        let k = f.generate_with_id("demo0001").unwrap();
        let s = k.secret();
        for i in 9..s.len() {
            for c in [b'0', b'z', b'Q'] {
                let mut b = s.as_bytes().to_vec();
                if b[i] == c || b[i] == b'_' {
                    continue;
                }
                b[i] = c;
                let t = String::from_utf8(b).unwrap();
                assert!(f.parse(&t).is_none(), "{i}");
            }
        }
        assert!(f.parse("tsk_demo0001_short").is_none());
        assert!(f.parse("other_demo0001_x").is_none());
        assert!(f.parse(&s.replace("tsk_", "tsx_")).is_none());
    }

    #[test]
    fn hashes_roundtrip_and_compare() {
        let k = ApiKeyFormat::default().generate();
        for h in [
            KeyHasher::sha256(),
            KeyHasher::hmac_sha256(&[7u8; 32]).unwrap(),
        ] {
            let stored = h.parse_hash(&h.hash(k.secret()), "h").unwrap();
            assert!(h.verify(k.secret(), &stored));
            assert!(!h.verify("tsk_other", &stored));
        }
        let e = KeyHasher::sha256()
            .parse_hash("hmac-sha256:abc", "api_keys.keys[0].hash")
            .unwrap_err();
        assert!(e.to_string().starts_with("api_keys.keys[0].hash:"));
        assert!(KeyHasher::hmac_sha256(b"short").is_err());
        assert!(ApiKeyFormat::new("Bad", 40).is_err());
        assert!(ApiKeyFormat::new("ok", 16).is_err());
    }
}
