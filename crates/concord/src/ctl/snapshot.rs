//! `concord snapshot save|status|restore`.
//!
//! * `save FILE [--format concord|etcd]` streams `Maintenance.Snapshot` from one endpoint
//!   into `FILE.part`, syncs it and renames it to `FILE`, so that `FILE` is never a
//!   partial image. `--format etcd` asks for an etcd 3.4 snapshot (what `etcdctl snapshot
//!   save` gets from Concord by default), which etcd's tools read.
//! * `status FILE` checks a saved file (either format) and describes it; an etcd snapshot
//!   exactly as `etcdctl snapshot status` does.
//! * `restore FILE --data-dir D` creates a data dir holding the snapshot's keyspace (from
//!   either format, so also from a snapshot of an etcd cluster), from which a member
//!   bootstraps a new cluster (`--initial-cluster-state new`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use concord_proto::etcdserverpb as pb;
use concord_server::server::restore::{restore_snapshot, snapshot_status, SnapshotInfo};
use indicatif::{ProgressBar, ProgressStyle};

use super::printer::{self, Json};
use super::{out, CtlError, CtlResult, Ctx, GlobalArgs, OutputFormat};

/// `concord snapshot`.
#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(flatten)]
    /// Global flags.
    pub global: GlobalArgs,
    #[command(subcommand)]
    /// The snapshot command.
    pub cmd: SnapshotCmd,
}

/// The snapshot commands.
#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Stores a snapshot of one member's keyspace to a file
    Save {
        /// The file to write
        file: PathBuf,
        /// The file's format: Concord's checksummed chunks, or an etcd 3.4 snapshot
        /// (a bbolt database) that etcdctl and etcd can read
        #[arg(long, value_enum, default_value_t = SnapshotFormat::Concord)]
        format: SnapshotFormat,
    },
    /// Checks a snapshot file and prints its hash, revision, chunks and size
    Status {
        /// The snapshot file
        file: PathBuf,
    },
    /// Restores a snapshot file into a new data directory
    Restore {
        /// The snapshot file
        file: PathBuf,
        /// The data directory to create [default: <name>.concord]
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The member's name, for the printed start command
        #[arg(long, default_value = "default")]
        name: String,
        /// The new cluster's members, for the printed start command
        #[arg(long, default_value = "default=http://localhost:2380")]
        initial_cluster: String,
        /// The member's peer URLs, for the printed start command
        #[arg(long, default_value = "http://localhost:2380")]
        initial_advertise_peer_urls: String,
        /// The new cluster's token, for the printed start command
        #[arg(long, default_value = "etcd-cluster")]
        initial_cluster_token: String,
    },
}

/// The format `snapshot save` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SnapshotFormat {
    /// Concord's image: checksummed chunks.
    Concord,
    /// An etcd 3.4 snapshot: a bbolt database and its SHA-256.
    Etcd,
}

/// `snapshot status` output: for an etcd snapshot, etcdctl's; for Concord's image, the
/// chunk count where etcdctl has the key count.
pub fn format_status(info: &SnapshotInfo, fmt: OutputFormat) -> String {
    let (hash, revision, (count_name, count_json, count), bytes) = match info {
        SnapshotInfo::Concord {
            revision,
            chunks,
            bytes,
            hash,
        } => (
            *hash,
            *revision,
            ("total chunks", "totalChunks", *chunks as u64),
            *bytes,
        ),
        SnapshotInfo::Etcd(s) => (
            s.hash,
            s.revision,
            ("total keys", "totalKey", s.total_keys),
            s.total_size,
        ),
    };
    let row = vec![
        format!("{hash:x}"),
        revision.to_string(),
        count.to_string(),
        printer::humanize_bytes(bytes),
    ];
    match fmt {
        OutputFormat::Json => format!(
            "{}\n",
            Json::Obj(vec![
                ("hash".into(), Json::num(hash)),
                ("revision".into(), Json::num(revision)),
                (count_json.into(), Json::num(count)),
                ("totalSize".into(), Json::num(bytes)),
            ])
            .render()
        ),
        OutputFormat::Table => {
            printer::table(&["hash", "revision", count_name, "total size"], &[row])
        }
        _ => printer::comma_rows(&[row]),
    }
}

fn part_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

async fn save(global: &GlobalArgs, file: &Path, format: SnapshotFormat) -> CtlResult<()> {
    let eps: Vec<&String> = global
        .endpoints
        .iter()
        .filter(|e| !e.trim().is_empty())
        .collect();
    if eps.len() != 1 {
        return Err(CtlError::new(format!(
            "snapshot must be requested to one selected node, not multiple {eps:?}"
        )));
    }
    let ctx = Ctx::connect(global).await?;
    let mut request = tonic::Request::new(pb::SnapshotRequest {});
    let name = match format {
        SnapshotFormat::Concord => "concord",
        SnapshotFormat::Etcd => "etcd",
    };
    request.metadata_mut().insert(
        concord_proto::SNAPSHOT_FORMAT_KEY,
        tonic::metadata::MetadataValue::from_static(name),
    );
    let mut stream = ctx.call(ctx.maintenance().snapshot(request)).await?;
    let part = part_path(file);
    let mut f = std::fs::File::create(&part)
        .map_err(|e| CtlError::new(format!("could not open {} ({e})", part.display())))?;
    let bar = ProgressBar::hidden();
    let result: CtlResult<u64> = async {
        let mut written = 0u64;
        loop {
            let msg = tokio::time::timeout(global.command_timeout, stream.message())
                .await
                .map_err(|_| CtlError::new("context deadline exceeded"))??;
            let Some(msg) = msg else { break };
            if written == 0 {
                let total = msg.remaining_bytes + msg.blob.len() as u64;
                bar.set_length(total);
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                if let Ok(style) = ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
                ) {
                    bar.set_style(style);
                }
            }
            f.write_all(&msg.blob)
                .map_err(|e| CtlError::new(format!("cannot write {} ({e})", part.display())))?;
            written += msg.blob.len() as u64;
            bar.set_position(written);
        }
        f.sync_all()
            .map_err(|e| CtlError::new(format!("cannot sync {} ({e})", part.display())))?;
        Ok(written)
    }
    .await;
    bar.finish_and_clear();
    drop(f);
    match result {
        Ok(0) => {
            let _ = std::fs::remove_file(&part);
            Err(CtlError::new("snapshot stream was empty"))
        }
        Ok(_) => {
            std::fs::rename(&part, file).map_err(|e| {
                CtlError::new(format!(
                    "could not rename {} to {} ({e})",
                    part.display(),
                    file.display()
                ))
            })?;
            out(&format!("Snapshot saved at {}\n", file.display()));
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

/// Runs a blocking snapshot-file function with a spinner on standard error.
async fn with_spinner<T: Send + 'static>(
    msg: &str,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> CtlResult<T> {
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(msg.to_string());
    spinner.enable_steady_tick(Duration::from_millis(100));
    let r = tokio::task::spawn_blocking(f).await;
    spinner.finish_and_clear();
    match r {
        Ok(r) => r.map_err(CtlError::new),
        Err(e) => Err(CtlError::new(format!("snapshot task failed: {e}"))),
    }
}

/// Runs `concord snapshot ...`.
pub async fn run(args: SnapshotArgs) -> CtlResult<()> {
    let fmt = args.global.write_out;
    match args.cmd {
        SnapshotCmd::Save { file, format } => save(&args.global, &file, format).await,
        SnapshotCmd::Status { file } => {
            let info = with_spinner("checking snapshot", move || snapshot_status(&file)).await?;
            out(&format_status(&info, fmt));
            Ok(())
        }
        SnapshotCmd::Restore {
            file,
            data_dir,
            name,
            initial_cluster,
            initial_advertise_peer_urls,
            initial_cluster_token,
        } => {
            let data_dir = data_dir.unwrap_or_else(|| PathBuf::from(format!("{name}.concord")));
            let dir = data_dir.clone();
            let restored =
                with_spinner("restoring snapshot", move || restore_snapshot(&file, &dir)).await?;
            for note in &restored.not_restored {
                out(&format!("not restored: {note}\n"));
            }
            out(&format!(
                "restored snapshot (revision {}, {}) into {}\n\
                 start the member of the new cluster with:\n  \
                 concord server --name {} --data-dir {} --initial-cluster {} \
                 --initial-advertise-peer-urls {} --initial-cluster-token {} \
                 --initial-cluster-state new\n",
                restored.revision,
                printer::humanize_bytes(restored.info.bytes()),
                data_dir.display(),
                name,
                data_dir.display(),
                initial_cluster,
                initial_advertise_peer_urls,
                initial_cluster_token
            ));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_output() {
        let info = SnapshotInfo::Concord {
            revision: 12,
            chunks: 1,
            bytes: 20480,
            hash: 0xfe01cf57,
        };
        assert_eq!(
            format_status(&info, OutputFormat::Simple),
            "fe01cf57, 12, 1, 20 kB\n"
        );
        assert_eq!(
            format_status(&info, OutputFormat::Json),
            "{\"hash\":4261531479,\"revision\":12,\"totalChunks\":1,\"totalSize\":20480}\n"
        );
        assert!(format_status(&info, OutputFormat::Table).contains("| TOTAL CHUNKS |"));
        // etcdctl's own lines for an etcd snapshot.
        let etcd = SnapshotInfo::Etcd(concord_server::server::restore::EtcdStatus {
            hash: 0x683f_e127,
            revision: 313,
            total_keys: 414,
            total_size: 69632,
        });
        assert_eq!(
            format_status(&etcd, OutputFormat::Simple),
            "683fe127, 313, 414, 70 kB\n"
        );
        assert_eq!(
            format_status(&etcd, OutputFormat::Json),
            "{\"hash\":1749016871,\"revision\":313,\"totalKey\":414,\"totalSize\":69632}\n"
        );
        assert_eq!(
            part_path(Path::new("/x/s.db")),
            PathBuf::from("/x/s.db.part")
        );
    }
}
