//! Restoring a member's data dir from a saved snapshot (`concord snapshot restore`,
//! etcd's `etcdutl snapshot restore`): the keyspace, revisions and leases of the
//! snapshot, under a new cluster whose members are given on the command line.
//!
//! Both kinds of snapshot file are read, told apart by their first bytes: Concord's own
//! image (checksummed chunks, `concord snapshot save`) and an etcd v3 snapshot (a bbolt
//! database, as `etcdctl snapshot save` writes it from etcd or from Concord), so an etcd
//! cluster moves to Concord with its data and revisions.

use std::path::Path;

use concord_storage::disk::RealDisk;
use concord_storage::etcd_snapshot;
pub use concord_storage::etcd_snapshot::EtcdStatus;
use concord_storage::mvcc::{MvccConfig, MvccStore};
use concord_storage::snapshot::{split_saved, SnapshotInstaller};

/// What a snapshot file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotInfo {
    /// Concord's own image.
    Concord {
        /// The store revision of the image.
        revision: i64,
        /// Number of chunks.
        chunks: usize,
        /// Bytes.
        bytes: u64,
        /// CRC32C of the whole file (a content hash for comparing copies).
        hash: u32,
    },
    /// An etcd v3 snapshot, described as `etcdctl snapshot status` describes it.
    Etcd(EtcdStatus),
}

impl SnapshotInfo {
    /// The revision of the image's last change.
    pub fn revision(&self) -> i64 {
        match self {
            Self::Concord { revision, .. } => *revision,
            Self::Etcd(s) => s.revision,
        }
    }

    /// Size of the image in bytes.
    pub fn bytes(&self) -> u64 {
        match self {
            Self::Concord { bytes, .. } => *bytes,
            Self::Etcd(s) => s.total_size,
        }
    }
}

/// A restored data dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The file's description.
    pub info: SnapshotInfo,
    /// The store's revision (for an etcd file compacted past its last change, the
    /// compacted revision).
    pub revision: i64,
    /// What the file held that was not restored, one line each.
    pub not_restored: Vec<String>,
}

fn read(file: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))
}

/// Fills the new store at `store_path` from the file's bytes; returns it, the file's
/// description and what was left out.
fn install(
    data: &[u8],
    store_path: &Path,
) -> Result<(MvccStore<RealDisk>, SnapshotInfo, Vec<String>), String> {
    let mut store =
        MvccStore::open(RealDisk, store_path, MvccConfig::default()).map_err(|e| e.to_string())?;
    if etcd_snapshot::is_etcd_snapshot(data) {
        let report = store.import_etcd(data).map_err(|e| e.to_string())?;
        return Ok((
            store,
            SnapshotInfo::Etcd(report.status),
            report.not_imported,
        ));
    }
    let chunks = split_saved(data).map_err(|e| e.to_string())?;
    let mut installer = SnapshotInstaller::new(RealDisk, store_path).map_err(|e| e.to_string())?;
    for c in &chunks {
        installer.push(c).map_err(|e| e.to_string())?;
    }
    store
        .install_snapshot(installer)
        .map_err(|e| e.to_string())?;
    let info = SnapshotInfo::Concord {
        revision: store.revision(),
        chunks: chunks.len(),
        bytes: data.len() as u64,
        hash: crc32c::crc32c(data),
    };
    Ok((store, info, Vec::new()))
}

/// Verifies a saved snapshot file completely and describes it: an etcd snapshot as
/// `etcdctl snapshot status` does (after checking its SHA-256 and every bucket); a
/// Concord image by installing it (every chunk's checksum, the trailer) in a scratch
/// directory that is removed.
pub fn snapshot_status(file: &Path) -> Result<SnapshotInfo, String> {
    let data = read(file)?;
    if etcd_snapshot::is_etcd_snapshot(&data) {
        return etcd_snapshot::status(&data)
            .map(SnapshotInfo::Etcd)
            .map_err(|e| e.to_string());
    }
    let scratch = std::env::temp_dir().join(format!(
        "concord-snapshot-status-{}-{}",
        std::process::id(),
        crc32c::crc32c(file.to_string_lossy().as_bytes())
    ));
    let _ = std::fs::remove_dir_all(&scratch);
    let result = install(&data, &scratch.join("state.redb")).map(|(_, info, _)| info);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Creates `data_dir` (which must not exist or be empty) holding the snapshot's keyspace,
/// ready for `concord server --data-dir <data_dir> --initial-cluster ...
/// --initial-cluster-state new`: the member bootstraps a new cluster around it. Every
/// member of the new cluster is restored from the same file. On error, what was created
/// is removed.
pub fn restore_snapshot(file: &Path, data_dir: &Path) -> Result<Restored, String> {
    if data_dir.exists()
        && std::fs::read_dir(data_dir)
            .map_err(|e| e.to_string())?
            .next()
            .is_some()
    {
        return Err(format!(
            "data dir {} exists and is not empty; restore into a new directory",
            data_dir.display()
        ));
    }
    let data = read(file)?;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let result =
        install(&data, &data_dir.join("state.redb")).and_then(|(mut store, info, notes)| {
            store.rebase_for_new_cluster().map_err(|e| e.to_string())?;
            Ok(Restored {
                info,
                revision: store.revision(),
                not_restored: notes,
            })
        });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(data_dir);
    }
    result
}
