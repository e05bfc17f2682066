//! The HMAC-SHA256 chain: each record carries `seq` and a `mac` over the previous record's
//! MAC and its own canonical bytes.
//!
//! A chained line is `<canonical>,"mac":"<64 hex>"}` where `<canonical>` is the record's
//! JSON object up to and including its `"seq":N` member, without the closing brace; and
//! `mac = HMAC-SHA256(key, prev_mac || canonical)`, with `prev_mac` 32 zero bytes for the
//! first record (`seq` 0).

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Length of the `,"mac":"<64 hex>"}` suffix.
pub(crate) const MAC_SUFFIX_LEN: usize = 8 + 64 + 2;

/// Chain state kept by the writer.
#[derive(Clone)]
pub(crate) struct Chain {
    key: HmacSha256,
    pub(crate) seq: u64,
    pub(crate) prev: [u8; 32],
}

impl Chain {
    pub(crate) fn new(key: &[u8]) -> Self {
        Self {
            key: keyed(key),
            seq: 0,
            prev: [0; 32],
        }
    }

    /// Continues after an existing chained line (a previous run's last record).
    pub(crate) fn resume_after(&mut self, line: &str) -> bool {
        match split_line(line) {
            Some((canonical, mac)) => match seq_of(canonical) {
                Some(seq) => {
                    self.seq = seq + 1;
                    self.prev = mac;
                    true
                }
                None => false,
            },
            None => false,
        }
    }

    /// Appends `,"seq":N`, the MAC and the closing brace to an open record.
    pub(crate) fn seal(&mut self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(b",\"seq\":");
        buf.extend_from_slice(self.seq.to_string().as_bytes());
        let mac = compute(&self.key, &self.prev, buf);
        buf.extend_from_slice(b",\"mac\":\"");
        let mut hex = [0u8; 64];
        let _ = hex::encode_to_slice(mac, &mut hex);
        buf.extend_from_slice(&hex);
        buf.extend_from_slice(b"\"}");
        self.prev = mac;
        self.seq += 1;
    }
}

pub(crate) fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    HmacSha256::new_from_slice(key).expect("HMAC accepts any key length")
}

pub(crate) fn compute(key: &HmacSha256, prev: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut m = key.clone();
    m.update(prev);
    m.update(canonical);
    m.finalize().into_bytes().into()
}

/// Splits a chained line into its canonical bytes and MAC.
pub(crate) fn split_line(line: &str) -> Option<(&str, [u8; 32])> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.len() < MAC_SUFFIX_LEN || !line.is_char_boundary(line.len() - MAC_SUFFIX_LEN) {
        return None;
    }
    let (canonical, suffix) = line.split_at(line.len() - MAC_SUFFIX_LEN);
    let hex_part = suffix.strip_prefix(",\"mac\":\"")?.strip_suffix("\"}")?;
    let mut mac = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut mac).ok()?;
    Some((canonical, mac))
}

/// The `seq` at the end of a canonical record (`...,"seq":N`).
pub(crate) fn seq_of(canonical: &str) -> Option<u64> {
    let pos = canonical.rfind(",\"seq\":")?;
    canonical[pos + 7..].parse().ok()
}
