//! Bucket properties: replicas per key (`n_val`), the read and write quorums and the
//! durability of each of the 16 buckets.
//!
//! They are cluster metadata, replicated by the Raft group as `ClusterMeta` entries under
//! `bucket/<n>` ([`set_command`]), so every member applies the same properties in the same
//! order; the server reads them back after each change ([`from_meta`]) and hands them to
//! [`ApNode::set_buckets`]. A change is made through [`ApNode::change_bucket`], which
//! validates it and has the server's [`BucketCatalog`] propose it. A bucket never set has
//! [`BucketProps::default`].

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use concord_storage::mvcc::types::Command;
use serde::{Deserialize, Serialize};

use super::{write, ApError, ApNode, BUCKETS};

/// Most replicas a bucket may ask for.
pub const MAX_N_VAL: u32 = 9;

/// When a replica acknowledges a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After the group commit's fsync (the default).
    #[default]
    Fsync,
    /// After the group commit, before its fsync; the store fsyncs within a second (a
    /// replica's crash may lose that second, as Redis's `appendfsync everysec`).
    Async,
}

impl Durability {
    /// The name used in the APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Async => "async",
        }
    }

    /// Parses `fsync` or `async` (any case).
    pub fn parse(s: &str) -> Option<Durability> {
        match s.to_ascii_lowercase().as_str() {
            "fsync" => Some(Durability::Fsync),
            "async" => Some(Durability::Async),
            _ => None,
        }
    }
}

/// One bucket's properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketProps {
    /// Replicas per key (fewer while the cluster has fewer members).
    pub n_val: u32,
    /// Answers a read waits for; `None`: a majority of `n_val`.
    #[serde(default)]
    pub r: Option<u32>,
    /// Acknowledgements a write waits for; `None`: a majority of `n_val`.
    #[serde(default)]
    pub w: Option<u32>,
    /// When replicas acknowledge.
    #[serde(default)]
    pub durability: Durability,
    /// Concurrent writes of a key are all kept as siblings, with a causal context
    /// ([`super::siblings`]), instead of the last one winning.
    #[serde(default)]
    pub siblings: bool,
}

impl Default for BucketProps {
    fn default() -> Self {
        BucketProps {
            n_val: 3,
            r: None,
            w: None,
            durability: Durability::Fsync,
            siblings: false,
        }
    }
}

impl BucketProps {
    /// The read quorum in force.
    pub fn r(&self) -> u32 {
        self.r.unwrap_or(self.n_val / 2 + 1)
    }

    /// The write quorum in force.
    pub fn w(&self) -> u32 {
        self.w.unwrap_or(self.n_val / 2 + 1)
    }

    /// Why these properties cannot be used, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_N_VAL).contains(&self.n_val) {
            return Err(format!("n_val must be from 1 to {MAX_N_VAL}"));
        }
        for (name, q) in [("r", self.r), ("w", self.w)] {
            if let Some(q) = q {
                if !(1..=self.n_val).contains(&q) {
                    return Err(format!("{name} must be from 1 to n_val ({})", self.n_val));
                }
            }
        }
        Ok(())
    }
}

/// A change to a bucket's properties: what is `None` stays as it is; `Some(None)` for a
/// quorum returns it to the majority default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketChange {
    /// New `n_val`.
    pub n_val: Option<u32>,
    /// New read quorum.
    pub r: Option<Option<u32>>,
    /// New write quorum.
    pub w: Option<Option<u32>>,
    /// New durability.
    pub durability: Option<Durability>,
    /// New siblings mode.
    pub siblings: Option<bool>,
}

impl BucketChange {
    /// `props` with this change made, or why the result is invalid.
    pub fn applied_to(&self, props: BucketProps) -> Result<BucketProps, String> {
        let out = BucketProps {
            n_val: self.n_val.unwrap_or(props.n_val),
            r: self.r.unwrap_or(props.r),
            w: self.w.unwrap_or(props.w),
            durability: self.durability.unwrap_or(props.durability),
            siblings: self.siblings.unwrap_or(props.siblings),
        };
        out.check()?;
        Ok(out)
    }
}

/// Where bucket properties are made durable and replicated (the server proposes them to
/// the Raft group).
pub trait BucketCatalog: Send + Sync {
    /// Stores `props` for `bucket` cluster-wide; answers once this member has applied it.
    fn store(
        &self,
        bucket: u8,
        props: BucketProps,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
}

/// The key prefix of bucket properties among the cluster metadata.
pub const PREFIX: &str = "bucket/";

/// The Raft command that sets `bucket`'s properties.
pub fn set_command(bucket: u8, props: &BucketProps) -> Command {
    Command::ClusterMeta {
        key: format!("{PREFIX}{bucket}").into_bytes(),
        // Serializing plain fields into a Vec cannot fail.
        value: Some(serde_json::to_vec(props).unwrap_or_default()),
    }
}

/// The properties of every bucket that has some among the cluster metadata entries;
/// entries that are not bucket properties are ignored, damaged ones skipped with a
/// warning.
pub fn from_meta(entries: &[(Vec<u8>, Vec<u8>)]) -> BTreeMap<u8, BucketProps> {
    let mut out = BTreeMap::new();
    for (k, v) in entries {
        let Some(bucket) = std::str::from_utf8(k)
            .ok()
            .and_then(|k| k.strip_prefix(PREFIX))
            .and_then(|b| b.parse::<u8>().ok())
            .filter(|b| u32::from(*b) < BUCKETS)
        else {
            continue;
        };
        match serde_json::from_slice::<BucketProps>(v) {
            Ok(p) if p.check().is_ok() => {
                out.insert(bucket, p);
            }
            Ok(p) => tracing::warn!(bucket, ?p, "invalid bucket properties skipped"),
            Err(e) => tracing::warn!(bucket, error = %e, "undecodable bucket properties skipped"),
        }
    }
    out
}

impl ApNode {
    /// The properties of `bucket`.
    pub fn bucket(&self, bucket: u8) -> BucketProps {
        super::read(&self.inner.buckets)
            .get(usize::from(bucket))
            .copied()
            .unwrap_or_default()
    }

    /// Every bucket's properties (those not in `props` get the defaults).
    pub fn set_buckets(&self, props: &BTreeMap<u8, BucketProps>) {
        let mut all = write(&self.inner.buckets);
        for (b, slot) in all.iter_mut().enumerate() {
            let p = u8::try_from(b)
                .ok()
                .and_then(|b| props.get(&b))
                .copied()
                .unwrap_or_default();
            *slot = p;
            if let Ok(b) = u8::try_from(b) {
                self.inner
                    .store
                    .set_async(b, p.durability == Durability::Async);
            }
        }
    }

    /// How many keys this member holds in `bucket` (tombstones included).
    pub async fn keys_held(&self, bucket: u8) -> Result<u64, ApError> {
        let node = self.clone();
        super::blocking(move || Ok(node.inner.store.key_count(bucket)?)).await
    }

    /// Where bucket changes are stored (set by the server at start).
    pub fn set_catalog(&self, catalog: std::sync::Arc<dyn BucketCatalog>) {
        *write(&self.inner.catalog) = Some(catalog);
    }

    /// Changes `bucket`'s properties cluster-wide; the properties now in force.
    pub async fn change_bucket(
        &self,
        bucket: u8,
        change: BucketChange,
    ) -> Result<BucketProps, ApError> {
        if u32::from(bucket) >= BUCKETS {
            return Err(ApError::Invalid(format!(
                "bucket {bucket} does not exist (buckets are 0 to {})",
                BUCKETS - 1
            )));
        }
        let props = change
            .applied_to(self.bucket(bucket))
            .map_err(ApError::Invalid)?;
        let catalog = super::read(&self.inner.catalog).clone();
        let Some(catalog) = catalog else {
            return Err(ApError::Unavailable(
                "bucket properties cannot be changed on this member".into(),
            ));
        };
        catalog
            .store(bucket, props)
            .await
            .map_err(ApError::Unavailable)?;
        let mut all = super::read(&self.inner.buckets).to_vec();
        all[usize::from(bucket)] = props;
        let map = (0u8..).zip(all).collect();
        self.set_buckets(&map);
        Ok(props)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorums_default_to_a_majority_and_changes_are_checked() {
        let p = BucketProps::default();
        assert_eq!((p.n_val, p.r(), p.w()), (3, 2, 2));
        let five = BucketChange {
            n_val: Some(5),
            ..Default::default()
        };
        let p5 = five.applied_to(p).unwrap();
        assert_eq!((p5.r(), p5.w()), (3, 3), "the default follows n_val");
        let one = BucketChange {
            w: Some(Some(1)),
            durability: Some(Durability::Async),
            ..Default::default()
        };
        let p1 = one.applied_to(p5).unwrap();
        assert_eq!(
            (p1.n_val, p1.r(), p1.w(), p1.durability),
            (5, 3, 1, Durability::Async)
        );
        let back = BucketChange {
            w: Some(None),
            ..Default::default()
        };
        assert_eq!(back.applied_to(p1).unwrap().w(), 3);
        for bad in [
            BucketChange {
                n_val: Some(0),
                ..Default::default()
            },
            BucketChange {
                n_val: Some(MAX_N_VAL + 1),
                ..Default::default()
            },
            BucketChange {
                r: Some(Some(4)),
                ..Default::default()
            },
            BucketChange {
                w: Some(Some(0)),
                ..Default::default()
            },
        ] {
            assert!(bad.applied_to(p).is_err(), "{bad:?}");
        }
        // Lowering n_val below an explicit quorum is refused, not silently clamped.
        let r3 = BucketChange {
            r: Some(Some(3)),
            ..Default::default()
        };
        let lower = BucketChange {
            n_val: Some(2),
            ..Default::default()
        };
        assert!(lower.applied_to(r3.applied_to(p).unwrap()).is_err());
    }

    #[test]
    fn properties_round_trip_through_the_metadata_and_damage_is_skipped() {
        let p = BucketProps {
            n_val: 5,
            r: Some(1),
            w: None,
            durability: Durability::Async,
            siblings: true,
        };
        let Command::ClusterMeta {
            key,
            value: Some(value),
        } = set_command(7, &p)
        else {
            panic!("not a metadata entry");
        };
        let entries = vec![
            (key, value),
            (b"bucket/8".to_vec(), b"{not json".to_vec()),
            (b"bucket/99".to_vec(), b"{\"n_val\":1}".to_vec()),
            (b"bucket/9".to_vec(), b"{\"n_val\":0}".to_vec()),
            (b"member/0000000000000001".to_vec(), b"{}".to_vec()),
        ];
        let got = from_meta(&entries);
        assert_eq!(got, BTreeMap::from([(7, p)]));
    }
}
