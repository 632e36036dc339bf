//! Round trips, malformed input and golden bytes of the command encoding.

use super::*;

fn sample_txn() -> TxnRequest {
    TxnRequest {
        compare: vec![
            Compare {
                result: CompareResult::Greater,
                target: CompareTarget::Value(b"v".to_vec()),
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
            },
            Compare {
                result: CompareResult::NotEqual,
                target: CompareTarget::Lease(-3),
                key: b"k".to_vec(),
                range_end: Vec::new(),
            },
        ],
        success: vec![
            RequestOp::Put(PutRequest {
                key: b"k".to_vec(),
                value: vec![0, 255, 7],
                lease: 9,
                prev_kv: true,
                ignore_value: false,
                ignore_lease: true,
            }),
            RequestOp::Range(RangeRequest {
                key: b"a".to_vec(),
                range_end: vec![0],
                limit: 5,
                revision: 2,
                sort_order: SortOrder::Descend,
                sort_target: SortTarget::Mod,
                keys_only: true,
                count_only: false,
                min_mod_revision: 1,
                max_mod_revision: 2,
                min_create_revision: 3,
                max_create_revision: 4,
            }),
        ],
        failure: vec![
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: b"x".to_vec(),
                range_end: b"y".to_vec(),
                prev_kv: true,
            }),
            RequestOp::Txn(TxnRequest::default()),
        ],
    }
}

/// One command of every kind (and both shapes of the optional ones), named for the
/// golden file.
fn samples() -> Vec<(&'static str, Command)> {
    vec![
        ("noop", Command::Noop),
        (
            "put",
            Command::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..PutRequest::default()
            }),
        ),
        (
            "put-all-flags",
            Command::Put(PutRequest {
                key: b"key".to_vec(),
                value: vec![0, 255],
                lease: -2,
                prev_kv: true,
                ignore_value: true,
                ignore_lease: true,
            }),
        ),
        (
            "delete-range",
            Command::DeleteRange(DeleteRangeRequest {
                key: b"k".to_vec(),
                range_end: b"z".to_vec(),
                prev_kv: true,
            }),
        ),
        ("txn", Command::Txn(sample_txn())),
        ("compact", Command::Compact { revision: 42 }),
        ("lease-grant", Command::LeaseGrant { id: 7, ttl: 60 }),
        ("lease-revoke", Command::LeaseRevoke { id: 7 }),
        (
            "lease-checkpoint",
            Command::LeaseCheckpoint {
                id: 7,
                remaining_ttl: 12,
            },
        ),
        ("alarm-nospace", Command::AlarmNoSpace),
        ("alarm-disarm", Command::AlarmDisarm),
        ("alarm-activate", Command::AlarmActivate { member: 0 }),
        (
            "alarm-deactivate",
            Command::AlarmDeactivate {
                member: 0x8e9e_05c5_2164_694d,
            },
        ),
        (
            "cluster-meta-set",
            Command::ClusterMeta {
                key: b"member/1".to_vec(),
                value: Some(b"{}".to_vec()),
            },
        ),
        (
            "cluster-meta-remove",
            Command::ClusterMeta {
                key: b"member/1".to_vec(),
                value: None,
            },
        ),
        (
            "cluster-meta-cas",
            Command::ClusterMetaCas {
                key: b"auth".to_vec(),
                expect: Some(b"{}".to_vec()),
                value: Some(b"{\"enabled\":true}".to_vec()),
            },
        ),
        (
            "cluster-meta-cas-absent",
            Command::ClusterMetaCas {
                key: b"auth".to_vec(),
                expect: None,
                value: None,
            },
        ),
        (
            "authorized",
            Command::Authorized {
                auth_revision: Some(7),
                cmd: Box::new(Command::Put(PutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    ..PutRequest::default()
                })),
            },
        ),
        (
            "authorized-no-user",
            Command::Authorized {
                auth_revision: None,
                cmd: Box::new(Command::Txn(sample_txn())),
            },
        ),
    ]
}

#[test]
fn every_command_round_trips_and_refuses_prefixes_and_trailing_bytes() {
    for (name, command) in samples() {
        let bytes = command.encode();
        assert_eq!(Command::decode(&bytes).as_ref(), Ok(&command), "{name}");
        for cut in 0..bytes.len() {
            assert!(
                Command::decode(&bytes[..cut]).is_err(),
                "{name}: prefix {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Command::decode(&longer),
            Err(CommandDecodeError::Trailing),
            "{name}"
        );
    }
}

const GOLDEN: &str = "testdata/command_format_1.txt";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd hex length");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The bytes of every command kind, as written by format 1, are pinned in
/// `testdata/command_format_1.txt`: each must still decode to the same command and encode
/// to the same bytes. `CONCORD_REWRITE_GOLDEN=1` rewrites the file (commit the diff only
/// when the change is intended and a new format version covers it).
#[test]
fn golden_bytes_of_every_command_kind_still_decode() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    if std::env::var_os("CONCORD_REWRITE_GOLDEN").is_some() {
        let mut text = String::from(
            "# Command encoding, format 1: one command per line, `name hex`.\n\
             # Written by CONCORD_REWRITE_GOLDEN=1; entries in existing logs have these bytes.\n",
        );
        for (name, command) in samples() {
            text.push_str(&format!("{name} {}\n", hex(&command.encode())));
        }
        std::fs::write(&path, text).expect("write golden file");
    }
    let text = std::fs::read_to_string(&path).expect("read golden file");
    let golden: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_once(' ').expect("`name hex`"))
        .collect();
    let samples = samples();
    assert_eq!(golden.len(), samples.len(), "one golden line per sample");
    for ((name, command), (gname, ghex)) in samples.iter().zip(golden) {
        assert_eq!(*name, gname);
        let bytes = unhex(ghex);
        assert_eq!(Command::decode(&bytes).as_ref(), Ok(command), "{name}");
        assert_eq!(hex(&command.encode()), ghex, "{name}: encoding changed");
    }
}

#[test]
fn the_versioned_prefix_decodes_format_1_and_refuses_unknown_versions() {
    let plain = Command::LeaseRevoke { id: 3 }.encode();
    let mut versioned = vec![VERSIONED, FORMAT_VERSION];
    versioned.extend_from_slice(&plain);
    assert_eq!(
        Command::decode(&versioned),
        Ok(Command::LeaseRevoke { id: 3 })
    );
    let mut future = vec![VERSIONED, FORMAT_VERSION + 1];
    future.extend_from_slice(&plain);
    assert_eq!(
        Command::decode(&future),
        Err(CommandDecodeError::UnknownVersion(FORMAT_VERSION + 1))
    );
}

#[test]
fn garbage_never_panics() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in 0..400usize {
        let mut bytes = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bytes.push(x as u8);
        }
        if let Some(b) = bytes.first_mut() {
            *b %= 11;
        }
        let _ = Command::decode(&bytes);
    }
}

#[test]
fn nesting_is_bounded() {
    let mut txn = TxnRequest::default();
    for _ in 0..MAX_TXN_DEPTH + 1 {
        txn = TxnRequest {
            success: vec![RequestOp::Txn(txn)],
            ..TxnRequest::default()
        };
    }
    let bytes = Command::Txn(txn).encode();
    assert_eq!(Command::decode(&bytes), Err(CommandDecodeError::TooDeep));
}

#[test]
fn authorized_does_not_nest() {
    let inner = Command::Authorized {
        auth_revision: None,
        cmd: Box::new(Command::Noop),
    };
    let nested = Command::Authorized {
        auth_revision: Some(1),
        cmd: Box::new(inner.clone()),
    };
    assert_eq!(
        Command::decode(&nested.encode()),
        Err(CommandDecodeError::InvalidTag(14))
    );
    // Not through the versioned prefix either.
    let mut bytes = vec![14, 0, VERSIONED, FORMAT_VERSION];
    bytes.extend_from_slice(&inner.encode());
    assert_eq!(
        Command::decode(&bytes),
        Err(CommandDecodeError::InvalidTag(14))
    );
}
