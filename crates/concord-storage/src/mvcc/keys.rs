//! Byte encodings of the MVCC tables' keys and values.
//!
//! # Guarantees
//!
//! 1. `revs` rows are keyed by [`Revision::to_bytes`] (big-endian, so the table is in
//!    revision order and writes append) and hold the user key and the version, sealed by a
//!    CRC32C over the row's key and value: damage is an error, never a wrong answer.
//! 2. Decoding checks lengths, kinds and checksums and returns `None` on damage, never
//!    panics.
//! 3. The legacy `key_revs` encoding (layout 1, ordered by key) is still decoded, to
//!    migrate stores written by earlier versions (`MvccStore::open`).

use super::index::Latest;
use super::types::KeyValue;

/// A revision: `main` is the store revision of a write transaction, `sub` orders the
/// changes inside it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    /// Store revision.
    pub main: i64,
    /// Position within the transaction.
    pub sub: i64,
}

impl Revision {
    pub(crate) fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        b[8..].copy_from_slice(&(self.sub as u64).to_be_bytes());
        b
    }

    pub(crate) fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 16 {
            return None;
        }
        let mut m = [0u8; 8];
        let mut s = [0u8; 8];
        m.copy_from_slice(&b[..8]);
        s.copy_from_slice(&b[8..]);
        Some(Self {
            main: u64::from_be_bytes(m) as i64,
            sub: u64::from_be_bytes(s) as i64,
        })
    }
}

/// Escapes `0x00` as `0x00 0xFF` and terminates with `0x00 0x01` (layout 1's key order).
#[cfg(test)]
pub(crate) fn encode_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2);
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 1]);
    out
}

/// `encode_key(key) ++ rev`: a layout-1 `key_revs` key.
#[cfg(test)]
pub(crate) fn key_rev(key: &[u8], rev: Revision) -> Vec<u8> {
    let mut k = encode_key(key);
    k.extend_from_slice(&rev.to_bytes());
    k
}

/// Splits a layout-1 `key_revs` key into the user key and the revision.
pub(crate) fn decode_key_rev(b: &[u8]) -> Option<(Vec<u8>, Revision)> {
    if b.len() < 18 {
        return None;
    }
    let (enc, rev) = b.split_at(b.len() - 16);
    Some((decode_key(enc)?, Revision::from_bytes(rev)?))
}

fn decode_key(enc: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(enc.len());
    let mut i = 0;
    while i < enc.len() {
        let b = enc[i];
        if b == 0 {
            match enc.get(i + 1)? {
                0xFF => out.push(0),
                1 if i + 2 == enc.len() => return Some(out),
                _ => return None,
            }
            i += 2;
        } else {
            out.push(b);
            i += 1;
        }
    }
    None
}

/// The stored value of one version: a live key-value or a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    Live(KeyValue),
    Tombstone,
}

const LIVE: u8 = 0;
const TOMBSTONE: u8 = 1;

/// `[kind][create i64][version i64][lease i64][value]`, all little-endian.
fn version_payload(v: &Version, b: &mut Vec<u8>) {
    match v {
        Version::Tombstone => b.push(TOMBSTONE),
        Version::Live(kv) => {
            b.push(LIVE);
            b.extend_from_slice(&kv.create_revision.to_le_bytes());
            b.extend_from_slice(&kv.version.to_le_bytes());
            b.extend_from_slice(&kv.lease.to_le_bytes());
            b.extend_from_slice(&kv.value);
        }
    }
}

/// A layout-1 `key_revs` value: the version payload, then a CRC32C of `key_rev` (the
/// row's key) and the payload.
#[cfg(test)]
pub(crate) fn encode_version(key_rev: &[u8], v: &Version) -> Vec<u8> {
    let mut b = Vec::new();
    version_payload(v, &mut b);
    let crc = crc32c::crc32c_append(crc32c::crc32c(key_rev), &b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// A `revs` row's value: `[key length u32][key][version payload]`, sealed (see [`seal`])
/// with the row's key, the revision.
pub(crate) fn encode_row(rev: Revision, key: &[u8], v: &Version) -> Vec<u8> {
    let value_len = match v {
        Version::Live(kv) => kv.value.len(),
        Version::Tombstone => 0,
    };
    let mut b = Vec::with_capacity(4 + key.len() + 29 + value_len + 4);
    b.extend_from_slice(&(key.len() as u32).to_le_bytes());
    b.extend_from_slice(key);
    version_payload(v, &mut b);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&rev.to_bytes()), &b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// The user key and the checked version payload of a `revs` row (key `rev`, value `b`).
fn split_row<'a>(rev: &[u8], b: &'a [u8]) -> Option<(&'a [u8], &'a [u8])> {
    let b = check_version(rev, b)?;
    let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let key = b.get(4..4usize.checked_add(len)?)?;
    Some((key, &b[4 + len..]))
}

/// The user key of a `revs` row and, for a live version, what the key index keeps of it
/// (`None`: a tombstone), checksum verified: the index rebuild reads only this.
pub(crate) fn row_key(rev: &[u8], b: &[u8]) -> Option<(Vec<u8>, Option<Latest>)> {
    let (key, payload) = split_row(rev, b)?;
    Some((key.to_vec(), payload_latest(payload)?))
}

/// Decodes a `revs` row (key `rev`, value `b`) that must be a live version of `key`
/// (the read path: the key index named it); `None` if it is not, or is damaged.
pub(crate) fn decode_live(rev: Revision, key: &[u8], b: &[u8]) -> Option<KeyValue> {
    let (k, payload) = split_row(&rev.to_bytes(), b)?;
    if k != key {
        return None;
    }
    match payload_version(key.to_vec(), rev, payload)? {
        Version::Live(kv) => Some(kv),
        Version::Tombstone => None,
    }
}

/// Decodes a `revs` row (key `rev`, value `b`) into its user key and version.
pub(crate) fn decode_row(rev: Revision, b: &[u8]) -> Option<(Vec<u8>, Version)> {
    let (key, payload) = split_row(&rev.to_bytes(), b)?;
    Some((key.to_vec(), payload_version(key.to_vec(), rev, payload)?))
}

/// The payload of a stored version if its checksum (over the row's key and the payload)
/// matches.
pub(crate) fn check_version<'a>(key_rev: &[u8], b: &'a [u8]) -> Option<&'a [u8]> {
    let (payload, crc) = b.split_at(b.len().checked_sub(4)?);
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    (crc32c::crc32c_append(crc32c::crc32c(key_rev), payload) == want).then_some(payload)
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_le_bytes(a)
}

/// Decodes a layout-1 version of `key` written at `rev` from its row (key `key_rev`,
/// value `b`), verifying the checksum.
pub(crate) fn decode_version(
    key_rev: &[u8],
    key: Vec<u8>,
    rev: Revision,
    b: &[u8],
) -> Option<Version> {
    payload_version(key, rev, check_version(key_rev, b)?)
}

fn payload_version(key: Vec<u8>, rev: Revision, b: &[u8]) -> Option<Version> {
    Some(match payload_latest(b)? {
        None => Version::Tombstone,
        Some(l) => Version::Live(KeyValue {
            key,
            create_revision: l.create_revision,
            mod_revision: rev.main,
            version: l.version,
            lease: l.lease,
            value: b[25..].to_vec(),
        }),
    })
}

/// The fixed fields of a checked version payload: `Some(None)` for a tombstone, `None` if
/// the payload is malformed.
fn payload_latest(b: &[u8]) -> Option<Option<Latest>> {
    match *b.first()? {
        TOMBSTONE if b.len() == 1 => Some(None),
        LIVE if b.len() >= 25 => Some(Some(Latest {
            create_revision: i64_at(b, 1),
            version: i64_at(b, 9),
            lease: i64_at(b, 17),
        })),
        _ => None,
    }
}

/// `value ++ CRC32C(key ++ value)`: the value of a row of the small tables (meta, leases,
/// lease_keys), checked by [`unseal`] on every read.
pub(crate) fn seal(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(value.len() + 4);
    b.extend_from_slice(value);
    let crc = crc32c::crc32c_append(crc32c::crc32c(key), value);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// The value sealed by [`seal`] for row `key`, if its checksum matches.
pub(crate) fn unseal<'a>(key: &[u8], stored: &'a [u8]) -> Option<&'a [u8]> {
    check_version(key, stored)
}

/// Lease table key: the id, big-endian, so leases iterate in id order.
pub(crate) fn lease_key(id: i64) -> [u8; 8] {
    (id as u64).to_be_bytes()
}

/// `lease_keys` table key: lease id then the user key.
pub(crate) fn lease_key_entry(id: i64, key: &[u8]) -> Vec<u8> {
    let mut b = lease_key(id).to_vec();
    b.extend_from_slice(key);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn key_encoding_keeps_order_and_roundtrips(
            a in proptest::collection::vec(0u8..3, 0..6),
            b in proptest::collection::vec(0u8..3, 0..6),
            ra in any::<(u32, u16)>(), rb in any::<(u32, u16)>())
        {
            let ra = Revision { main: i64::from(ra.0), sub: i64::from(ra.1) };
            let rb = Revision { main: i64::from(rb.0), sub: i64::from(rb.1) };
            let ea = key_rev(&a, ra);
            let eb = key_rev(&b, rb);
            prop_assert_eq!((a.clone(), ra).cmp(&(b.clone(), rb)), ea.cmp(&eb));
            prop_assert_eq!(decode_key_rev(&ea), Some((a, ra)));
        }
    }

    #[test]
    fn row_roundtrip_and_damage() {
        let kv = KeyValue {
            key: b"k\x00y".to_vec(),
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            value: b"value".to_vec(),
            lease: 7,
        };
        let rev = Revision { main: 9, sub: 2 };
        let row = encode_row(rev, &kv.key, &Version::Live(kv.clone()));
        assert_eq!(
            decode_row(rev, &row),
            Some((kv.key.clone(), Version::Live(kv.clone())))
        );
        assert_eq!(
            row_key(&rev.to_bytes(), &row),
            Some((kv.key.clone(), Some(Latest::of(&kv))))
        );
        let tomb = encode_row(rev, b"k", &Version::Tombstone);
        assert_eq!(row_key(&rev.to_bytes(), &tomb), Some((b"k".to_vec(), None)));
        // Any flipped bit, a cut, or the row under another revision is caught.
        for i in 0..row.len() * 8 {
            let mut bad = row.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert_eq!(decode_row(rev, &bad), None);
        }
        assert_eq!(decode_row(rev, &row[..row.len() - 1]), None);
        assert_eq!(decode_row(Revision { main: 9, sub: 3 }, &row), None);
    }

    #[test]
    fn version_roundtrip() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            value: b"v".to_vec(),
            lease: 7,
        };
        let rev = Revision { main: 9, sub: 1 };
        let k = key_rev(b"k", rev);
        let b = encode_version(&k, &Version::Live(kv.clone()));
        assert_eq!(
            decode_version(&k, b"k".to_vec(), rev, &b),
            Some(Version::Live(kv))
        );
        assert_eq!(
            decode_version(&k, vec![], rev, &encode_version(&k, &Version::Tombstone)),
            Some(Version::Tombstone)
        );
        assert_eq!(decode_version(&k, vec![], rev, &[0, 1]), None);
        // Any flipped bit in the value, or the row moved to another key, is caught.
        for i in 0..b.len() * 8 {
            let mut bad = b.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert_eq!(decode_version(&k, b"k".to_vec(), rev, &bad), None);
        }
        let other = key_rev(b"j", rev);
        assert_eq!(decode_version(&other, b"j".to_vec(), rev, &b), None);
    }
}
