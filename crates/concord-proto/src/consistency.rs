//! Read consistency levels beyond etcd's two, chosen per request through one gRPC
//! metadata key that any etcd client can set ([`METADATA_KEY`]).
//!
//! | value | level | a member answers a Range |
//! |---|---|---|
//! | `strong` (default) | [`ReadConsistency::Strong`] | after a ReadIndex confirmed by a quorum (linearizable) |
//! | `bounded=<duration>` | [`ReadConsistency::Bounded`] | from its store if a ReadIndex it completed started at most that long ago, else after a new one |
//! | `session=<revision>` | [`ReadConsistency::Session`] | from its store once it applied that revision |
//! | `eventual` | [`ReadConsistency::Eventual`] | from its store at once (etcd's `serializable`) |
//!
//! A duration is a number with `ms` or `s` (`250ms`, `2s`), or a bare number of
//! milliseconds. `serializable: true` in the request means `eventual` whatever the key
//! says. The server's side and the guarantees are in docs/consistency.md.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The gRPC metadata key that carries a [`ReadConsistency`].
pub const METADATA_KEY: &str = "concord-consistency";

/// How fresh a read must be; see the module.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Linearizable.
    #[default]
    Strong,
    /// At most this stale: reflects every write acknowledged before `now - bound`.
    Bounded(Duration),
    /// Reflects at least this revision (a session's own writes and reads).
    Session(i64),
    /// The member's store as it is.
    Eventual,
}

/// A consistency value that does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseConsistencyError(String);

impl fmt::Display for ParseConsistencyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad {METADATA_KEY} {:?}: expected strong, eventual, session=<revision> or \
             bounded=<duration> (250ms, 2s)",
            self.0
        )
    }
}

impl std::error::Error for ParseConsistencyError {}

fn parse_duration(s: &str) -> Option<Duration> {
    let (digits, unit_ms) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 1)
    } else if let Some(secs) = s.strip_suffix('s') {
        (secs, 1000)
    } else {
        (s, 1)
    };
    let n: u64 = digits.parse().ok()?;
    Some(Duration::from_millis(n.checked_mul(unit_ms)?))
}

impl FromStr for ReadConsistency {
    type Err = ParseConsistencyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseConsistencyError(s.to_string());
        let t = s.trim();
        match t.split_once('=') {
            None if t.eq_ignore_ascii_case("strong") => Ok(Self::Strong),
            None if t.eq_ignore_ascii_case("eventual") => Ok(Self::Eventual),
            Some((k, v)) if k.eq_ignore_ascii_case("bounded") => {
                parse_duration(v.trim()).map(Self::Bounded).ok_or_else(bad)
            }
            Some((k, v)) if k.eq_ignore_ascii_case("session") => match v.trim().parse::<i64>() {
                Ok(rev) if rev >= 0 => Ok(Self::Session(rev)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for ReadConsistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Strong => f.write_str("strong"),
            Self::Bounded(d) => write!(f, "bounded={}ms", d.as_millis()),
            Self::Session(rev) => write!(f, "session={rev}"),
            Self::Eventual => f.write_str("eventual"),
        }
    }
}

impl ReadConsistency {
    /// The level a request's metadata asks for (`Strong` when it names none).
    pub fn from_metadata(md: &tonic::metadata::MetadataMap) -> Result<Self, ParseConsistencyError> {
        match md.get(METADATA_KEY) {
            None => Ok(Self::Strong),
            Some(v) => v
                .to_str()
                .map_err(|_| ParseConsistencyError("<not ASCII>".into()))?
                .parse(),
        }
    }

    /// Sets this level on `request`'s metadata (removing the key for `Strong`, the
    /// default).
    pub fn set_on<T>(self, request: &mut tonic::Request<T>) {
        let md = request.metadata_mut();
        if self == Self::Strong {
            md.remove(METADATA_KEY);
        } else {
            let v = self
                .to_string()
                .parse()
                .expect("a consistency level prints as ASCII");
            md.insert(METADATA_KEY, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_form() {
        let ok = [
            ("strong", ReadConsistency::Strong),
            (" Eventual ", ReadConsistency::Eventual),
            ("session=0", ReadConsistency::Session(0)),
            ("session=42", ReadConsistency::Session(42)),
            (
                "bounded=250",
                ReadConsistency::Bounded(Duration::from_millis(250)),
            ),
            (
                "bounded=250ms",
                ReadConsistency::Bounded(Duration::from_millis(250)),
            ),
            (
                "BOUNDED=2s",
                ReadConsistency::Bounded(Duration::from_secs(2)),
            ),
        ];
        for (s, want) in ok {
            assert_eq!(s.parse::<ReadConsistency>(), Ok(want), "{s}");
        }
        for bad in [
            "",
            "linear",
            "session",
            "session=-1",
            "session=x",
            "bounded=",
            "bounded=1h",
            "bounded=-5ms",
            "strong=1",
        ] {
            let err = bad.parse::<ReadConsistency>().unwrap_err();
            assert!(
                err.to_string().contains("expected strong, eventual"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn metadata_round_trip_and_default() {
        let mut req = tonic::Request::new(());
        assert_eq!(
            ReadConsistency::from_metadata(req.metadata()),
            Ok(ReadConsistency::Strong)
        );
        ReadConsistency::Session(7).set_on(&mut req);
        assert_eq!(req.metadata().get(METADATA_KEY).unwrap(), "session=7");
        assert_eq!(
            ReadConsistency::from_metadata(req.metadata()),
            Ok(ReadConsistency::Session(7))
        );
        ReadConsistency::Strong.set_on(&mut req);
        assert!(req.metadata().get(METADATA_KEY).is_none());
    }

    proptest! {
        #[test]
        fn display_parses_back(kind in 0u8..4, n in 0u64..1_000_000_000) {
            let c = match kind {
                0 => ReadConsistency::Strong,
                1 => ReadConsistency::Eventual,
                2 => ReadConsistency::Session(n as i64),
                _ => ReadConsistency::Bounded(Duration::from_millis(n)),
            };
            prop_assert_eq!(c.to_string().parse::<ReadConsistency>(), Ok(c));
        }
    }
}
