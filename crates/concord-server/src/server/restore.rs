//! Restoring a member's data dir from a saved snapshot (`concord snapshot restore`,
//! etcd's `etcdutl snapshot restore`): the keyspace, revisions and leases of the
//! snapshot, under a new cluster whose members are given on the command line.

use std::path::Path;

use concord_storage::disk::RealDisk;
use concord_storage::mvcc::{MvccConfig, MvccStore};
use concord_storage::snapshot::{split_saved, SnapshotInstaller};

/// What a snapshot file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The store revision of the image.
    pub revision: i64,
    /// Number of chunks.
    pub chunks: usize,
    /// Bytes.
    pub bytes: u64,
    /// CRC32C of the whole file (a content hash for comparing copies).
    pub hash: u32,
}

fn install(data: &[u8], store_path: &Path) -> Result<MvccStore<RealDisk>, String> {
    let chunks = split_saved(data).map_err(|e| e.to_string())?;
    let mut store =
        MvccStore::open(RealDisk, store_path, MvccConfig::default()).map_err(|e| e.to_string())?;
    let mut installer = SnapshotInstaller::new(RealDisk, store_path).map_err(|e| e.to_string())?;
    for c in &chunks {
        installer.push(c).map_err(|e| e.to_string())?;
    }
    store
        .install_snapshot(installer)
        .map_err(|e| e.to_string())?;
    Ok(store)
}

/// Verifies a saved snapshot file completely (every chunk's checksum, the trailer) and
/// describes it. Uses a scratch directory that is removed.
pub fn snapshot_status(file: &Path) -> Result<SnapshotInfo, String> {
    let data = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let scratch = std::env::temp_dir().join(format!(
        "concord-snapshot-status-{}-{}",
        std::process::id(),
        crc32c::crc32c(file.to_string_lossy().as_bytes())
    ));
    let _ = std::fs::remove_dir_all(&scratch);
    let result = install(&data, &scratch.join("state.redb")).map(|store| SnapshotInfo {
        revision: store.revision(),
        chunks: split_saved(&data).map(|c| c.len()).unwrap_or(0),
        bytes: data.len() as u64,
        hash: crc32c::crc32c(&data),
    });
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Creates `data_dir` (which must not exist or be empty) holding the snapshot's keyspace,
/// ready for `concord server --data-dir <data_dir> --initial-cluster ...
/// --initial-cluster-state new`: the member bootstraps a new cluster around it. Every
/// member of the new cluster is restored from the same file.
pub fn restore_snapshot(file: &Path, data_dir: &Path) -> Result<SnapshotInfo, String> {
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
    let info = snapshot_status(file)?;
    let data = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let mut store = install(&data, &data_dir.join("state.redb"))?;
    store.rebase_for_new_cluster().map_err(|e| e.to_string())?;
    Ok(info)
}
