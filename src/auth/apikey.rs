//! API keys: format, generation, hashing and stores.
//!
//! A key looks like `tsk_7Hq2mX9a_<40 random base62 characters><6 checksum characters>`:
//! - a short lowercase **prefix** (`tsk` by default) so users and secret scanners recognise it;
//! - a public **key id** (8 base62 characters) used to look the key up;
//! - at least 32 (40 by default) **random** base62 characters (~238 bits);
//! - a **checksum**: CRC32 of everything before it, as 6 base62 characters, so a mistyped
//!   or forged key is rejected before any store lookup.
//!
//! The server stores only a hash of the key: SHA-256 (`sha256v2:<base64url>`) or
//! HMAC-SHA-256 with a server secret (`hmac-sha256v2:<base64url>`), compared in constant
//! time. The `v2` formats hash the key without its checksum (the checksum is a function of
//! the rest, so it adds nothing secret): a default 59-character key is then one SHA-256
//! block instead of two. Hashes of the whole key written by earlier versions (`sha256:` and
//! `hmac-sha256:`) are still verified.
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
//! assert!(stored.starts_with("sha256v2:"));
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
use crate::fast_hash::Seeds;
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

/// `BASE62_VALUE[b]` is the digit value of a base62 byte (0 for other bytes).
static BASE62_VALUE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 62 {
        t[BASE62[i] as usize] = i as u8;
        i += 1;
    }
    t
};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// High bit of each byte set where the byte is `>= lo` (every byte below 0x80).
#[inline(always)]
fn bytes_ge(w: u64, lo: u8) -> u64 {
    w.wrapping_add(u64::from(0x80 - lo) * ONES) & HIGH
}

/// Per byte of `w` (every byte below 0x80): high bit set where the byte is base62.
#[inline(always)]
fn base62_bits(w: u64) -> u64 {
    let digit = bytes_ge(w, b'0') & !bytes_ge(w, b'9' + 1);
    let l = w | (0x20 * ONES); // 'A'..='Z' -> 'a'..='z'; no other byte lands there
    let alpha = bytes_ge(l, b'a') & !bytes_ge(l, b'z' + 1);
    digit | alpha
}

/// Per byte of `w`: high bit set where the byte is not base62.
#[inline(always)]
fn not_base62_bits(w: u64) -> u64 {
    // non-ASCII bytes are flagged by `w & HIGH`; when there are none, the additions in
    // `base62_bits` never carry into the next byte
    (w | !base62_bits(w)) & HIGH
}

#[inline(always)]
fn word(b: &[u8]) -> u64 {
    // callers pass eight bytes; zeros (not base62) would be refused
    u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
}

#[cfg(test)]
/// Whether every byte is base62, eight bytes per step (SWAR) with no early exit and no
/// data-dependent branch. The last word overlaps the previous one (checking a byte twice
/// changes nothing); a slice shorter than eight bytes is padded with `'0'`.
fn all_base62(s: &[u8]) -> bool {
    let mut bad = 0u64;
    let mut words = s.chunks_exact(8);
    for c in &mut words {
        bad |= not_base62_bits(word(c));
    }
    let r = words.remainder();
    if !r.is_empty() {
        bad |= not_base62_bits(if s.len() >= 8 {
            word(&s[s.len() - 8..])
        } else {
            let mut w = [b'0'; 8];
            w[..r.len()].copy_from_slice(r);
            u64::from_le_bytes(w)
        });
    }
    bad == 0
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

/// Whether `sum` (base62, already checked) is the checksum of `body`: the presented digits
/// are decoded and compared with the CRC (the encoding is a bijection on 6 base62 digits).
fn checksum_matches(body: &[u8], sum: &[u8]) -> bool {
    presented_checksum(sum) == u64::from(crc32fast::hash(body))
}

/// The value of the base62 checksum digits `sum`.
#[inline(always)]
fn presented_checksum(sum: &[u8]) -> u64 {
    sum.iter()
        .fold(0u64, |n, &b| n * 62 + u64::from(BASE62_VALUE[b as usize]))
}

/// The key without its checksum, when `key` ends in a valid checksum.
fn checksum_body(key: &str) -> Option<&str> {
    let split = key.len().checked_sub(CHECKSUM_LEN).filter(|n| *n > 0)?;
    let (body, sum) = (key.get(..split)?, key.as_bytes().get(split..)?);
    let base62 = sum.iter().all(|&b| is_base62(b));
    (base62 && checksum_matches(body.as_bytes(), sum)).then_some(body)
}

fn random_base62(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| BASE62[rng.random_range(0..62)] as char)
        .collect()
}

/// The shape of API keys: prefix and length of the random part.
#[derive(Clone)]
pub struct ApiKeyFormat {
    prefix: String,
    secret_len: usize,
    lead: Lead,
    /// A fresh CRC32 state, cloned for each presented key: the CPU feature detection of
    /// `crc32fast::hash` is done once.
    crc: crc32fast::Hasher,
}

impl PartialEq for ApiKeyFormat {
    fn eq(&self, other: &Self) -> bool {
        // `lead` is a function of the prefix, `crc` a constant
        self.prefix == other.prefix && self.secret_len == other.secret_len
    }
}

impl Eq for ApiKeyFormat {}

impl fmt::Debug for ApiKeyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyFormat")
            .field("prefix", &self.prefix)
            .field("secret_len", &self.secret_len)
            .finish()
    }
}

impl Default for ApiKeyFormat {
    fn default() -> Self {
        Self::with("tsk", 40)
    }
}

/// `<prefix>_` as two (possibly overlapping) masked little-endian words: compared with
/// the first bytes of a presented key in two word comparisons instead of a `memcmp` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lead {
    first: u64,
    first_mask: u64,
    /// Where the second word starts (0 when `<prefix>_` fits in one word).
    last_at: usize,
    last: u64,
    last_mask: u64,
}

impl Lead {
    fn new(prefix: &str) -> Self {
        let mut lead = prefix.as_bytes().to_vec();
        lead.push(b'_');
        let n = lead.len(); // 2..=13
        let padded = |b: &[u8]| {
            let mut w = [0u8; 8];
            w[..b.len()].copy_from_slice(b);
            u64::from_le_bytes(w)
        };
        let first_mask = if n >= 8 {
            u64::MAX
        } else {
            (1u64 << (8 * n)) - 1
        };
        let first = padded(&lead[..n.min(8)]);
        if n <= 8 {
            Self {
                first,
                first_mask,
                last_at: 0,
                last: first,
                last_mask: first_mask,
            }
        } else {
            Self {
                first,
                first_mask,
                last_at: n - 8,
                last: padded(&lead[n - 8..]),
                last_mask: u64::MAX,
            }
        }
    }

    /// Whether `b` starts with `<prefix>_`; `b` is at least `last_at + 8` and 8 bytes long.
    #[inline(always)]
    fn matches(&self, b: &[u8]) -> bool {
        let w = |at: usize| b.get(at..at + 8).map_or(0, word);
        (w(0) & self.first_mask == self.first) & (w(self.last_at) & self.last_mask == self.last)
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
        Ok(Self::with(prefix, secret_len))
    }

    fn with(prefix: &str, secret_len: usize) -> Self {
        Self {
            prefix: prefix.to_owned(),
            secret_len,
            lead: Lead::new(prefix),
            crc: crc32fast::Hasher::new(),
        }
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
        let raw = self.parse_bytes(s.as_bytes())?;
        Some(ParsedKey {
            full: s,
            key_id: s.get(raw.id.clone())?,
        })
    }

    /// [`parse`](Self::parse) on raw bytes (a header value): a key that parses is ASCII.
    ///
    /// `<prefix>_<key id: 4 to 32 base62>_<at least 38 base62>`: after `<prefix>_`, the
    /// first byte that is not base62 must be the `_` ending the key id, and it must be the
    /// only one. One pass of eight bytes per step finds it and checks the rest.
    pub(crate) fn parse_bytes<'a>(&self, b: &'a [u8]) -> Option<RawKey<'a>> {
        let p = self.prefix.len();
        if b.len() > MAX_KEY_LEN
            || b.len() < p + 1 + 4 + 1 + MIN_SECRET_LEN + CHECKSUM_LEN
            || !self.lead.matches(b)
        {
            return None;
        }
        let rest = &b[p + 1..];
        let n = rest.len(); // >= 43: the `_` (at most at 32) is in the first five words
        let mut words = rest.chunks_exact(8);
        let mut at = 0;
        let (id_len, mut bad) = loop {
            let m = not_base62_bits(word(words.next()?));
            if m != 0 {
                break (at + (m.trailing_zeros() / 8) as usize, m & (m - 1));
            }
            at += 8;
            if at > 32 {
                return None;
            }
        };
        if !(4..=32).contains(&id_len)
            || n - id_len - 1 < MIN_SECRET_LEN + CHECKSUM_LEN
            || rest[id_len] != b'_'
        {
            return None;
        }
        for c in words {
            bad |= not_base62_bits(word(c));
        }
        // the last bytes, as a word overlapping the previous one (past the `_`: n - 8 > 32)
        bad |= not_base62_bits(word(&rest[n - 8..]));
        if bad != 0 {
            return None;
        }
        let split = b.len() - CHECKSUM_LEN;
        let mut crc = self.crc.clone();
        crc.update(&b[..split]);
        if presented_checksum(&b[split..]) != u64::from(crc.finalize()) {
            return None;
        }
        Some(RawKey {
            full: b,
            id: p + 1..p + 1 + id_len,
        })
    }
}

/// A well-formed, checksum-valid key as bytes (every byte is ASCII).
#[derive(Clone)]
pub(crate) struct RawKey<'a> {
    full: &'a [u8],
    id: std::ops::Range<usize>,
}

impl<'a> RawKey<'a> {
    /// The key id (base62, so always text).
    pub(crate) fn key_id(&self) -> &'a str {
        std::str::from_utf8(self.key_id_bytes()).unwrap_or_default()
    }
    pub(crate) fn key_id_bytes(&self) -> &'a [u8] {
        &self.full[self.id.clone()]
    }
    fn body(&self) -> &'a [u8] {
        &self.full[..self.full.len() - CHECKSUM_LEN]
    }
}

/// A stored key hash: the digest and which part of the key it covers.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredHash {
    digest: [u8; 32],
    /// `v2`: the key without its checksum; else (written by earlier versions) the whole key.
    v2: bool,
}

impl StoredHash {
    /// Whether this is a `v2` hash (of the key without its checksum, the format
    /// [`KeyHasher::hash`] writes) rather than a hash of the whole key.
    pub fn is_v2(&self) -> bool {
        self.v2
    }
}

impl fmt::Debug for StoredHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.v2 {
            "StoredHash(v2, ..)"
        } else {
            "StoredHash(whole key, ..)"
        })
    }
}

/// The stored-hash formats a [`KeyStore`] holds.
///
/// The layer hashes a presented key in every format the store holds, whichever format the
/// matching record has (or when no record matches): an unknown key id then costs exactly
/// the hashing work of a known one, also in a store that mixes formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashFormats {
    /// `sha256:` / `hmac-sha256:` hashes of the whole key (written by earlier versions).
    pub whole_key: bool,
    /// `sha256v2:` / `hmac-sha256v2:` hashes of the key without its checksum.
    pub v2: bool,
}

impl HashFormats {
    /// Both formats (the safe answer for a store that does not know).
    pub const BOTH: HashFormats = HashFormats {
        whole_key: true,
        v2: true,
    };
    /// Only `v2` hashes.
    pub const V2: HashFormats = HashFormats {
        whole_key: false,
        v2: true,
    };
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

    fn scheme(&self, v2: bool) -> &'static str {
        match (self.hmac.is_some(), v2) {
            (true, true) => "hmac-sha256v2",
            (true, false) => "hmac-sha256",
            (false, true) => "sha256v2",
            (false, false) => "sha256",
        }
    }

    fn sha(&self, data: &[u8]) -> [u8; 32] {
        match &self.hmac {
            Some(mac) => {
                let mut m = mac.clone();
                m.update(data);
                m.finalize().into_bytes().into()
            }
            None => sha256(data),
        }
    }

    /// The stored form of a key's hash: `v2` (the key without its checksum) for a key that
    /// ends in a valid checksum, else a hash of the whole string.
    pub fn digest(&self, key: &str) -> StoredHash {
        match checksum_body(key) {
            Some(body) => StoredHash {
                digest: self.sha(body.as_bytes()),
                v2: true,
            },
            None => self.digest_whole_key(key),
        }
    }

    /// A hash of the whole key, the format of earlier versions (`sha256:` /
    /// `hmac-sha256:`); still verified, no longer written by [`hash`](Self::hash).
    pub fn digest_whole_key(&self, key: &str) -> StoredHash {
        StoredHash {
            digest: self.sha(key.as_bytes()),
            v2: false,
        }
    }

    /// Encodes a stored hash: `sha256v2:<base64url>`, `hmac-sha256v2:<base64url>`, or the
    /// whole-key schemes `sha256:` / `hmac-sha256:`.
    pub fn encode(&self, stored: &StoredHash) -> String {
        format!(
            "{}:{}",
            self.scheme(stored.v2),
            URL_SAFE_NO_PAD.encode(stored.digest)
        )
    }

    /// The hash to store: `sha256v2:<base64url>` or `hmac-sha256v2:<base64url>` for a
    /// well-formed key (see [`digest`](Self::digest)).
    pub fn hash(&self, key: &str) -> String {
        self.encode(&self.digest(key))
    }

    /// Parses a stored hash written by [`hash`](Self::hash) (or by an earlier version, as
    /// a whole-key `sha256:` / `hmac-sha256:` hash) with the same kind of hasher.
    pub fn parse_hash(&self, stored: &str, key: &str) -> Result<StoredHash, ConfigError> {
        let (scheme, b64) = stored.split_once(':').ok_or_else(|| {
            ConfigError::invalid(
                key,
                "expected \"sha256v2:<base64url>\" or \"hmac-sha256v2:<base64url>\"",
            )
        })?;
        let v2 = if scheme == self.scheme(true) {
            true
        } else if scheme == self.scheme(false) {
            false
        } else {
            return Err(ConfigError::invalid(
                key,
                format!(
                    "hash scheme {scheme:?} does not match the configured hasher ({} or {})",
                    self.scheme(true),
                    self.scheme(false)
                ),
            ));
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(b64.trim_end_matches('='))
            .map_err(|_| ConfigError::invalid(key, "the hash is not valid base64url"))?;
        let digest: [u8; 32] = bytes
            .try_into()
            .map_err(|_| ConfigError::invalid(key, "the hash must be 32 bytes"))?;
        Ok(StoredHash { digest, v2 })
    }

    /// Whether `key` matches the stored hash (constant-time comparison). A `v2` hash only
    /// matches a key with a valid checksum.
    pub fn verify(&self, key: &str, stored: &StoredHash) -> bool {
        let digest = if stored.v2 {
            match checksum_body(key) {
                Some(body) => self.sha(body.as_bytes()),
                None => return false,
            }
        } else {
            self.sha(key.as_bytes())
        };
        ct_eq32(&digest, &stored.digest)
    }

    /// The request path: whether a parsed key matches `stored`, hashing the key in every
    /// format of `formats` (and in the stored one), so the work does not depend on which
    /// record (if any) was found.
    pub(crate) fn verify_parsed(
        &self,
        key: &RawKey<'_>,
        stored: &StoredHash,
        formats: HashFormats,
    ) -> bool {
        // a store of v2 hashes only (what `hash` writes): one hash, whatever the record
        if !formats.whole_key && stored.v2 {
            return ct_eq32(&self.sha(key.body()), &stored.digest);
        }
        let v2 = (formats.v2 || stored.v2).then(|| self.sha(key.body()));
        let whole = (formats.whole_key || !stored.v2).then(|| self.sha(key.full));
        let (used, other) = if stored.v2 { (v2, whole) } else { (whole, v2) };
        std::hint::black_box(other);
        used.is_some_and(|d| ct_eq32(&d, &stored.digest))
    }

    /// The hash an unknown key id is compared with (in the store's current format).
    pub(crate) fn dummy(&self, v2: bool) -> StoredHash {
        StoredHash {
            digest: self.sha(b"tower-shield dummy key for constant work"),
            v2,
        }
    }
}

/// Longest message that SHA-256 pads into a single block.
const ONE_BLOCK: usize = 55;

/// SHA-256 initial hash value (FIPS 180-4, 5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// SHA-256 of `data`. A message of at most [`ONE_BLOCK`] bytes (a default key without its
/// checksum) takes the padded block built on the stack and one call of `sha2`'s compression
/// function (SHA-NI when the CPU has it), without the streaming wrapper's buffering; longer
/// ones take `Sha256::digest`. Equal to `Sha256::digest` for every length (tested).
fn sha256(data: &[u8]) -> [u8; 32] {
    let n = data.len();
    if n > ONE_BLOCK {
        return Sha256::digest(data).into();
    }
    // built in place as the block type `compress256` takes (no copy of the array)
    let mut blocks = [sha2::digest::generic_array::GenericArray::default()];
    let block = &mut blocks[0];
    block[..n].copy_from_slice(data);
    block[n] = 0x80;
    block[56..].copy_from_slice(&((n as u64) * 8).to_be_bytes());
    let mut state = SHA256_IV;
    sha2::compress256(&mut state, &blocks);
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// Constant-time equality of two digests: XOR-accumulate in words, then one constant-time
/// comparison (no data-dependent branch; cheaper than a byte-wise `ct_eq`).
fn ct_eq32(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = (0..4).fold(0u64, |acc, i| {
        let w = |h: &[u8; 32]| u64::from_ne_bytes(h[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        acc | (w(a) ^ w(b))
    });
    diff.ct_eq(&0).into()
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

    /// The stored-hash formats the store holds (see [`HashFormats`]). The default, both,
    /// is always correct; a store holding only `v2` hashes (everything
    /// [`KeyHasher::hash`] writes) answers [`HashFormats::V2`] and saves the whole-key hash
    /// on every request.
    fn hash_formats(&self) -> HashFormats {
        HashFormats::BOTH
    }

    /// The request path's lookup: lends the record for a key id (the base62 bytes of a
    /// parsed key) to `f`. The default calls [`get`](Self::get); a store that can lend
    /// its records saves a reference count and a text conversion.
    fn visit(&self, key_id: &[u8], f: &mut dyn FnMut(Option<&ApiKeyRecord>)) {
        let record = std::str::from_utf8(key_id).ok().and_then(|id| self.get(id));
        f(record.as_deref())
    }
}

/// An in-memory key store (from configuration or code).
#[derive(Debug, Default)]
pub struct MemoryKeyStore {
    /// By key id (bytes). Key ids are attacker-chosen: a keyed (randomly seeded) hash.
    keys: HashMap<Box<[u8]>, Arc<ApiKeyRecord>, Seeds>,
    /// Number of records with whole-key (pre-`v2`) hashes.
    whole_key: usize,
}

impl MemoryKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a record (replacing one with the same key id).
    pub fn insert(&mut self, record: ApiKeyRecord) {
        let whole = usize::from(!record.hash.v2);
        let id: Box<[u8]> = record.key_id.as_bytes().into();
        if let Some(old) = self.keys.insert(id, Arc::new(record)) {
            self.whole_key -= usize::from(!old.hash.v2);
        }
        self.whole_key += whole;
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
    /// The record of a key id (the request path's lookup, also behind
    /// [`KeyStore::visit`]).
    #[inline]
    pub(crate) fn lookup(&self, key_id: &[u8]) -> Option<&ApiKeyRecord> {
        self.keys.get(key_id).map(|r| &**r)
    }
}

impl KeyStore for MemoryKeyStore {
    fn get(&self, key_id: &str) -> Option<Arc<ApiKeyRecord>> {
        self.keys.get(key_id.as_bytes()).cloned()
    }
    fn visit(&self, key_id: &[u8], f: &mut dyn FnMut(Option<&ApiKeyRecord>)) {
        f(self.lookup(key_id))
    }
    fn hash_formats(&self) -> HashFormats {
        HashFormats {
            whole_key: self.whole_key > 0,
            // an empty store still compares unknown ids with a v2 dummy
            v2: self.whole_key < self.keys.len() || self.keys.is_empty(),
        }
    }
}

impl<K: KeyStore> KeyStore for Arc<K> {
    fn get(&self, key_id: &str) -> Option<Arc<ApiKeyRecord>> {
        (**self).get(key_id)
    }
    fn hash_formats(&self) -> HashFormats {
        (**self).hash_formats()
    }
    fn visit(&self, key_id: &[u8], f: &mut dyn FnMut(Option<&ApiKeyRecord>)) {
        (**self).visit(key_id, f)
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

    /// The parser before the single-pass version, kept as the reference.
    fn reference_parse<'a>(f: &ApiKeyFormat, s: &'a str) -> Option<(&'a str, &'a str)> {
        if s.len() > MAX_KEY_LEN
            || !(s.len() > f.prefix.len()
                && s.as_bytes()[f.prefix.len()] == b'_'
                && s.starts_with(&f.prefix))
        {
            return None;
        }
        let rest = &s[f.prefix.len() + 1..];
        let (key_id, tail) = rest.split_once('_')?;
        if !(4..=32).contains(&key_id.len()) || !key_id.bytes().all(is_base62) {
            return None;
        }
        if tail.len() < MIN_SECRET_LEN + CHECKSUM_LEN || !tail.bytes().all(is_base62) {
            return None;
        }
        let (body, sum) = s.split_at(s.len() - CHECKSUM_LEN);
        if checksum(body.as_bytes()) != sum.as_bytes() {
            return None;
        }
        Some((s, key_id))
    }

    #[test]
    fn swar_base62_check_matches_the_bytewise_definition() {
        let mut rng = rand::rng();
        let alphabet = b"09AZaz_-.~/+=:@[`{ \t\x7f\x80\xff0123456789";
        for len in 0..80 {
            for _ in 0..200 {
                let v: Vec<u8> = (0..len)
                    .map(|_| {
                        if rng.random_range(0..4) == 0 {
                            alphabet[rng.random_range(0..alphabet.len())]
                        } else {
                            BASE62[rng.random_range(0..62)]
                        }
                    })
                    .collect();
                assert_eq!(all_base62(&v), v.iter().all(|&b| is_base62(b)), "{v:?}");
            }
        }
        // every byte value at every position of a word and of the overlapping tail
        for len in [1, 7, 8, 9, 15, 16, 43, 55] {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut v = vec![b'a'; len];
                    v[at] = b;
                    assert_eq!(all_base62(&v), is_base62(b), "{len} {at} {b}");
                }
            }
        }
    }

    #[test]
    fn parser_matches_the_reference_on_mutated_keys() {
        let mut rng = rand::rng();
        for f in [
            ApiKeyFormat::default(),
            ApiKeyFormat::new("pk1", 32).unwrap(),
            ApiKeyFormat::new("abcdefghijkl", 128).unwrap(),
        ] {
            for id in ["abcd", "demo0001", "0123456789abcdefghijABCDEFGHIJxy"] {
                let k = f.generate_with_id(id).unwrap();
                assert_eq!(f.parse(k.secret()).unwrap().key_id(), id);
                let bytes = k.secret().as_bytes();
                for _ in 0..2000 {
                    let mut b = bytes.to_vec();
                    match rng.random_range(0..4) {
                        0 => {
                            let i = rng.random_range(0..b.len());
                            b[i] = *b"_0aZ-".get(rng.random_range(0..5)).unwrap();
                        }
                        1 => {
                            b.truncate(rng.random_range(0..b.len()));
                        }
                        2 => {
                            let i = rng.random_range(0..b.len());
                            b.insert(i, b'_');
                        }
                        _ => {
                            // a well-formed body with the checksum recomputed
                            let i = rng.random_range(f.prefix.len() + 1..b.len() - CHECKSUM_LEN);
                            b[i] = if b[i] == b'_' { b'x' } else { b'_' };
                            let n = b.len() - CHECKSUM_LEN;
                            let sum = checksum(&b[..n]);
                            b[n..].copy_from_slice(&sum);
                        }
                    }
                    let s = String::from_utf8(b).unwrap();
                    assert_eq!(
                        f.parse(&s).map(|p| (p.full(), p.key_id())),
                        reference_parse(&f, &s),
                        "{s}"
                    );
                }
            }
        }
    }

    #[test]
    fn parser_matches_the_reference_for_every_id_length_and_odd_byte() {
        let odd = [b'_', b'-', b' ', b'0', b'z', 0x7f, 0x80, 0xc3, 0xff, 0];
        for f in [
            ApiKeyFormat::default(),
            ApiKeyFormat::new("a", 32).unwrap(),
            ApiKeyFormat::new("pk1", 32).unwrap(),
            ApiKeyFormat::new("abcdefg", 40).unwrap(),
            ApiKeyFormat::new("abcdefghijkl", 33).unwrap(),
        ] {
            // random parts from too short (the tail must hold 32 + 6 characters) to long
            for (id_len, secret_len) in (1..=36)
                .map(|i| (i, f.secret_len))
                .chain((28..=36).flat_map(|i| (20..34).map(move |s| (i, s))))
            {
                let id: String = (0..id_len).map(|i| BASE62[i * 7 % 62] as char).collect();
                let mut key = format!("{}_{}_{}", f.prefix, id, random_base62(secret_len));
                let sum = checksum(key.as_bytes());
                key.push_str(std::str::from_utf8(&sum).unwrap());
                let bytes = key.as_bytes();
                let expect = reference_parse(&f, &key).map(|(_, id)| id.to_owned());
                let got = f.parse_bytes(bytes).map(|r| r.key_id().to_owned());
                assert_eq!(got, expect, "{key}");
                assert_eq!(
                    got.is_some(),
                    (4..=32).contains(&id_len) && secret_len >= MIN_SECRET_LEN,
                    "{key}"
                );
                for at in 0..bytes.len() {
                    for &c in &odd {
                        let mut b = bytes.to_vec();
                        b[at] = c;
                        // the checksum made valid again for the changed body
                        let mut fixed = b.clone();
                        let n = fixed.len() - CHECKSUM_LEN;
                        let sum = checksum(&fixed[..n]);
                        fixed[n..].copy_from_slice(&sum);
                        for v in [b, fixed] {
                            let expect = std::str::from_utf8(&v)
                                .ok()
                                .and_then(|s| reference_parse(&f, s))
                                .map(|(_, id)| id.to_owned());
                            let got = f.parse_bytes(&v).map(|r| r.key_id().to_owned());
                            assert_eq!(got, expect, "{v:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn v2_hashes_cover_the_key_without_its_checksum_and_old_hashes_still_verify() {
        let k = ApiKeyFormat::default()
            .generate_with_id("demo0001")
            .unwrap();
        let body = &k.secret()[..k.secret().len() - CHECKSUM_LEN];
        assert_eq!(body.len(), 53, "one SHA-256 block");
        let h = KeyHasher::sha256();
        let v2 = h.hash(k.secret());
        assert_eq!(
            v2,
            format!("sha256v2:{}", URL_SAFE_NO_PAD.encode(Sha256::digest(body)))
        );
        // a hash of the whole key, as earlier versions wrote it
        let old = format!(
            "sha256:{}",
            URL_SAFE_NO_PAD.encode(Sha256::digest(k.secret()))
        );
        assert_eq!(h.encode(&h.digest_whole_key(k.secret())), old);
        let f = ApiKeyFormat::default();
        let raw = f.parse_bytes(k.secret().as_bytes()).unwrap();
        for stored in [&v2, &old] {
            let parsed = h.parse_hash(stored, "h").unwrap();
            assert_eq!(parsed.is_v2(), stored.starts_with("sha256v2:"));
            assert!(h.verify(k.secret(), &parsed));
            for formats in [HashFormats::BOTH, HashFormats::V2] {
                assert!(h.verify_parsed(&raw, &parsed, formats));
            }
            let other = f.generate_with_id("demo0001").unwrap();
            let raw_other = f.parse_bytes(other.secret().as_bytes()).unwrap();
            assert!(!h.verify(other.secret(), &parsed));
            assert!(!h.verify_parsed(&raw_other, &parsed, HashFormats::BOTH));
        }
        // a v2 hash only matches a key with a valid checksum
        let stored = h.parse_hash(&v2, "h").unwrap();
        assert!(!h.verify(body, &stored));
        assert!(!h.verify(&format!("{body}000000"), &stored));
        // strings that are not keys are hashed whole
        assert!(h.hash("not a key").starts_with("sha256:"));
        assert!(h.verify(
            "not a key",
            &h.parse_hash(&h.hash("not a key"), "h").unwrap()
        ));
        // HMAC: the same two formats
        let m = KeyHasher::hmac_sha256(&[7u8; 32]).unwrap();
        assert!(m.hash(k.secret()).starts_with("hmac-sha256v2:"));
        let whole = m.encode(&m.digest_whole_key(k.secret()));
        assert!(whole.starts_with("hmac-sha256:"));
        assert!(m.verify(k.secret(), &m.parse_hash(&whole, "h").unwrap()));
        assert!(m.parse_hash(&v2, "h").is_err());
        assert!(h.parse_hash(&whole, "h").is_err());
    }

    #[test]
    fn one_block_sha256_equals_the_streaming_digest() {
        let h = KeyHasher::sha256();
        let data: Vec<u8> = (0..130u8).map(|i| i.wrapping_mul(37)).collect();
        for len in 0..data.len() {
            let d = &data[..len];
            let expect: [u8; 32] = Sha256::digest(d).into();
            assert_eq!(h.sha(d), expect, "{len}");
            assert_eq!(sha256(d), expect, "{len}");
        }
    }

    #[test]
    fn memory_store_reports_the_formats_it_holds() {
        let f = ApiKeyFormat::default();
        let h = KeyHasher::sha256();
        let (a, b) = (f.generate(), f.generate());
        let mut store = MemoryKeyStore::new();
        assert_eq!(store.hash_formats(), HashFormats::V2);
        store.insert(ApiKeyRecord::new(a.key_id(), h.digest(a.secret())));
        assert_eq!(store.hash_formats(), HashFormats::V2);
        store.insert(ApiKeyRecord::new(
            b.key_id(),
            h.digest_whole_key(b.secret()),
        ));
        assert_eq!(store.hash_formats(), HashFormats::BOTH);
        // replacing the whole-key record with a v2 one
        store.insert(ApiKeyRecord::new(b.key_id(), h.digest(b.secret())));
        assert_eq!(store.hash_formats(), HashFormats::V2);
        store.insert(ApiKeyRecord::new(
            a.key_id(),
            h.digest_whole_key(a.secret()),
        ));
        store.insert(ApiKeyRecord::new(
            b.key_id(),
            h.digest_whole_key(b.secret()),
        ));
        assert_eq!(
            store.hash_formats(),
            HashFormats {
                whole_key: true,
                v2: false
            }
        );
        let mut seen = None;
        store.visit(a.key_id().as_bytes(), &mut |r| {
            seen = r.map(|r| r.key_id.clone())
        });
        assert_eq!(seen.as_deref(), Some(a.key_id()));
        store.visit(b"nope1234", &mut |r| seen = r.map(|r| r.key_id.clone()));
        assert_eq!(seen, None);
        assert_eq!(store.get(b.key_id()).unwrap().key_id, b.key_id());
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
