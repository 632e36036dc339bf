//! Output formats, byte for byte like etcdctl's printers (`printer_simple.go`,
//! `printer_json.go`, `printer_fields.go`, `printer_table.go`):
//!
//! * simple: a key line then a value line per key; `OK`; the deleted count.
//! * json: Go's `json.Marshal` of the response: snake_case fields in proto order, zero
//!   values left out, bytes in base64, 64-bit numbers as plain numbers.
//! * fields: `"Name" : value` lines.
//! * table: olekukonko/tablewriter with right-aligned cells and centred upper-case headers.

use base64::Engine as _;
use concord_proto::etcdserverpb as pb;
use concord_proto::mvccpb;

/// A JSON value whose object keys keep their order (Go prints struct fields in order).
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    /// A number, already formatted.
    Num(String),
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
    /// An array.
    Arr(Vec<Json>),
    /// An object, keys in order.
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// A number.
    pub fn num(n: impl std::fmt::Display) -> Json {
        Json::Num(n.to_string())
    }

    /// Bytes as Go marshals `[]byte`: standard base64.
    pub fn bytes(b: &[u8]) -> Json {
        Json::Str(base64::engine::general_purpose::STANDARD.encode(b))
    }

    /// Compact text, like `json.Marshal`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Num(n) => out.push_str(n),
            Json::Str(s) => out.push_str(&quote_json(s)),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&quote_json(k));
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

fn quote_json(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Builds a JSON object the way Go does with `omitempty`: zero values are left out.
#[derive(Default)]
pub struct ObjBuilder(Vec<(String, Json)>);

impl ObjBuilder {
    /// An empty object.
    pub fn new() -> Self {
        Self::default()
    }
    /// A number, left out when zero.
    pub fn num<N: std::fmt::Display + PartialEq + Default>(mut self, k: &str, n: N) -> Self {
        if n != N::default() {
            self.0.push((k.into(), Json::num(n)));
        }
        self
    }
    /// A number, always present (a Go field without `omitempty`).
    pub fn num_always(mut self, k: &str, n: impl std::fmt::Display) -> Self {
        self.0.push((k.into(), Json::num(n)));
        self
    }
    /// Bytes in base64, left out when empty.
    pub fn bytes(mut self, k: &str, b: &[u8]) -> Self {
        if !b.is_empty() {
            self.0.push((k.into(), Json::bytes(b)));
        }
        self
    }
    /// A string, left out when empty.
    pub fn str(mut self, k: &str, s: &str) -> Self {
        if !s.is_empty() {
            self.0.push((k.into(), Json::Str(s.into())));
        }
        self
    }
    /// A boolean, left out when false.
    pub fn bool(mut self, k: &str, b: bool) -> Self {
        if b {
            self.0.push((k.into(), Json::Bool(true)));
        }
        self
    }
    /// Any value, left out when `None`.
    pub fn opt(mut self, k: &str, v: Option<Json>) -> Self {
        if let Some(v) = v {
            self.0.push((k.into(), v));
        }
        self
    }
    /// An array, left out when empty.
    pub fn arr(mut self, k: &str, items: Vec<Json>) -> Self {
        if !items.is_empty() {
            self.0.push((k.into(), Json::Arr(items)));
        }
        self
    }
    /// The object.
    pub fn build(self) -> Json {
        Json::Obj(self.0)
    }
}

/// `ResponseHeader` in JSON.
pub fn header_json(h: Option<&pb::ResponseHeader>) -> Option<Json> {
    let h = h?;
    Some(
        ObjBuilder::new()
            .num("cluster_id", h.cluster_id)
            .num("member_id", h.member_id)
            .num("revision", h.revision)
            .num("raft_term", h.raft_term)
            .build(),
    )
}

/// `mvccpb.KeyValue` in JSON.
pub fn kv_json(kv: &mvccpb::KeyValue) -> Json {
    ObjBuilder::new()
        .bytes("key", &kv.key)
        .num("create_revision", kv.create_revision)
        .num("mod_revision", kv.mod_revision)
        .num("version", kv.version)
        .bytes("value", &kv.value)
        .num("lease", kv.lease)
        .build()
}

/// `RangeResponse` in JSON.
pub fn range_json(r: &pb::RangeResponse) -> Json {
    ObjBuilder::new()
        .opt("header", header_json(r.header.as_ref()))
        .arr("kvs", r.kvs.iter().map(kv_json).collect())
        .bool("more", r.more)
        .num("count", r.count)
        .build()
}

/// `PutResponse` in JSON.
pub fn put_json(r: &pb::PutResponse) -> Json {
    ObjBuilder::new()
        .opt("header", header_json(r.header.as_ref()))
        .opt("prev_kv", r.prev_kv.as_ref().map(kv_json))
        .build()
}

/// `DeleteRangeResponse` in JSON.
pub fn del_json(r: &pb::DeleteRangeResponse) -> Json {
    ObjBuilder::new()
        .opt("header", header_json(r.header.as_ref()))
        .num("deleted", r.deleted)
        .arr("prev_kvs", r.prev_kvs.iter().map(kv_json).collect())
        .build()
}

/// `TxnResponse` in JSON (a oneof is Go's `"Response":{"response_put":{...}}`).
pub fn txn_json(r: &pb::TxnResponse) -> Json {
    use pb::response_op::Response;
    let responses = r
        .responses
        .iter()
        .map(|op| {
            let inner = match &op.response {
                Some(Response::ResponseRange(r)) => Some(("response_range", range_json(r))),
                Some(Response::ResponsePut(r)) => Some(("response_put", put_json(r))),
                Some(Response::ResponseDeleteRange(r)) => {
                    Some(("response_delete_range", del_json(r)))
                }
                Some(Response::ResponseTxn(r)) => Some(("response_txn", txn_json(r))),
                None => None,
            };
            ObjBuilder::new()
                .opt(
                    "Response",
                    inner.map(|(k, v)| Json::Obj(vec![(k.to_string(), v)])),
                )
                .build()
        })
        .collect();
    ObjBuilder::new()
        .opt("header", header_json(r.header.as_ref()))
        .bool("succeeded", r.succeeded)
        .arr("responses", responses)
        .build()
}

/// Header fields promoted into a Go client response struct (`clientv3.LeaseGrantResponse`
/// embeds `*pb.ResponseHeader`).
pub fn promoted_header(h: Option<&pb::ResponseHeader>) -> ObjBuilder {
    let h = h.copied().unwrap_or_default();
    ObjBuilder::new()
        .num("cluster_id", h.cluster_id)
        .num("member_id", h.member_id)
        .num("revision", h.revision)
        .num("raft_term", h.raft_term)
}

/// Bytes as simple output prints them: as text, or with `--hex` as `\x66\x6f\x6f`
/// (etcdctl's form).
pub fn simple_bytes(out: &mut String, b: &[u8], hex: bool) {
    if hex {
        for byte in b {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    } else {
        out.push_str(&String::from_utf8_lossy(b));
    }
}

/// One key-value pair in simple format: the key line (unless `value_only`), the value line.
pub fn simple_kv(out: &mut String, kv: &mvccpb::KeyValue, value_only: bool, hex: bool) {
    if !value_only {
        simple_bytes(out, &kv.key, hex);
        out.push('\n');
    }
    simple_bytes(out, &kv.value, hex);
    out.push('\n');
}

/// `get` in simple format.
pub fn simple_range(r: &pb::RangeResponse, value_only: bool, hex: bool) -> String {
    let mut out = String::new();
    for kv in &r.kvs {
        simple_kv(&mut out, kv, value_only, hex);
    }
    out
}

/// `put` in simple format.
pub fn simple_put(r: &pb::PutResponse, hex: bool) -> String {
    let mut out = String::from("OK\n");
    if let Some(kv) = &r.prev_kv {
        simple_kv(&mut out, kv, false, hex);
    }
    out
}

/// `del` in simple format.
pub fn simple_del(r: &pb::DeleteRangeResponse, hex: bool) -> String {
    let mut out = format!("{}\n", r.deleted);
    for kv in &r.prev_kvs {
        simple_kv(&mut out, kv, false, hex);
    }
    out
}

/// `txn` in simple format: SUCCESS or FAILURE, then each response after a blank line.
pub fn simple_txn(r: &pb::TxnResponse, hex: bool) -> String {
    use pb::response_op::Response;
    let mut out = String::from(if r.succeeded {
        "SUCCESS\n"
    } else {
        "FAILURE\n"
    });
    for op in &r.responses {
        out.push('\n');
        match &op.response {
            Some(Response::ResponseRange(r)) => out.push_str(&simple_range(r, false, hex)),
            Some(Response::ResponsePut(r)) => out.push_str(&simple_put(r, hex)),
            Some(Response::ResponseDeleteRange(r)) => out.push_str(&simple_del(r, hex)),
            Some(Response::ResponseTxn(r)) => out.push_str(&simple_txn(r, hex)),
            None => {}
        }
    }
    out
}

/// Go's `%q` of a byte string (printable text as is, the rest escaped).
pub fn go_quote(b: &[u8]) -> String {
    let mut out = String::from("\"");
    let text = String::from_utf8_lossy(b);
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn fields_header(out: &mut String, h: Option<&pb::ResponseHeader>) {
    let h = h.copied().unwrap_or_default();
    out.push_str(&format!("\"ClusterID\" : {}\n", h.cluster_id));
    out.push_str(&format!("\"MemberID\" : {}\n", h.member_id));
    out.push_str(&format!("\"Revision\" : {}\n", h.revision));
    out.push_str(&format!("\"RaftTerm\" : {}\n", h.raft_term));
}

fn fields_kv(out: &mut String, prefix: &str, kv: &mvccpb::KeyValue) {
    out.push_str(&format!("\"{prefix}Key\" : {}\n", go_quote(&kv.key)));
    out.push_str(&format!(
        "\"{prefix}CreateRevision\" : {}\n",
        kv.create_revision
    ));
    out.push_str(&format!("\"{prefix}ModRevision\" : {}\n", kv.mod_revision));
    out.push_str(&format!("\"{prefix}Version\" : {}\n", kv.version));
    out.push_str(&format!("\"{prefix}Value\" : {}\n", go_quote(&kv.value)));
    out.push_str(&format!("\"{prefix}Lease\" : {}\n", kv.lease));
}

/// `get` in fields format.
pub fn fields_range(r: &pb::RangeResponse) -> String {
    let mut out = String::new();
    fields_header(&mut out, r.header.as_ref());
    for kv in &r.kvs {
        fields_kv(&mut out, "", kv);
    }
    out.push_str(&format!("\"More\" : {}\n", r.more));
    out.push_str(&format!("\"Count\" : {}\n", r.count));
    out
}

/// `put` in fields format.
pub fn fields_put(r: &pb::PutResponse) -> String {
    let mut out = String::new();
    fields_header(&mut out, r.header.as_ref());
    if let Some(kv) = &r.prev_kv {
        fields_kv(&mut out, "Prev", kv);
    }
    out
}

/// `del` in fields format.
pub fn fields_del(r: &pb::DeleteRangeResponse) -> String {
    let mut out = String::new();
    fields_header(&mut out, r.header.as_ref());
    out.push_str(&format!("\"Deleted\" : {}\n", r.deleted));
    for kv in &r.prev_kvs {
        fields_kv(&mut out, "Prev", kv);
    }
    out
}

/// A table like etcdctl's (olekukonko/tablewriter, `ALIGN_RIGHT`): upper-case headers
/// centred, cells right-aligned, one space of padding, `+---+` borders.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let headers: Vec<String> = headers.iter().map(|h| h.to_uppercase()).collect();
    let width = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = headers.iter().map(|h| width(h)).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(width(cell));
            }
        }
    }
    let line: String = {
        let mut l = String::from("+");
        for w in &widths {
            l.push_str(&"-".repeat(w + 2));
            l.push('+');
        }
        l.push('\n');
        l
    };
    let mut out = line.clone();
    out.push('|');
    for (h, w) in headers.iter().zip(&widths) {
        let gap = w - width(h);
        let left = gap / 2;
        out.push_str(&format!(
            " {}{}{} |",
            " ".repeat(left),
            h,
            " ".repeat(gap - left)
        ));
    }
    out.push('\n');
    out.push_str(&line);
    for row in rows {
        out.push('|');
        for (i, w) in widths.iter().enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            out.push_str(&format!(" {}{} |", " ".repeat(w - width(cell)), cell));
        }
        out.push('\n');
    }
    out.push_str(&line);
    out
}

/// Rows joined as etcdctl's simple printer does for tables: cells separated by ", ".
pub fn comma_rows(rows: &[Vec<String>]) -> String {
    rows.iter().map(|r| format!("{}\n", r.join(", "))).collect()
}

/// go-humanize's `Bytes`: SI units, `9 B`, `25 kB`, `1.2 MB`.
pub fn humanize_bytes(n: u64) -> String {
    const SIZES: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let f = n as f64;
    let e = (f.ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(SIZES.len() - 1);
    let val = (f / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", SIZES[e])
    } else {
        format!("{val:.0} {}", SIZES[e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> mvccpb::KeyValue {
        mvccpb::KeyValue {
            key: k.into(),
            value: v.into(),
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            lease: 0,
        }
    }

    fn header() -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: 14841639068965178418,
            member_id: 10276657743932975437,
            revision: 3,
            raft_term: 2,
        }
    }

    #[test]
    fn simple_get_is_key_then_value() {
        let r = pb::RangeResponse {
            header: Some(header()),
            kvs: vec![kv("foo", "bar"), kv("foo2", "")],
            more: false,
            count: 2,
        };
        assert_eq!(simple_range(&r, false, false), "foo\nbar\nfoo2\n\n");
        assert_eq!(simple_range(&r, true, false), "bar\n\n");
        assert_eq!(
            simple_range(&r, false, true),
            "\\x66\\x6f\\x6f\n\\x62\\x61\\x72\n\\x66\\x6f\\x6f\\x32\n\n"
        );
    }

    #[test]
    fn json_get_matches_etcdctl() {
        let r = pb::RangeResponse {
            header: Some(header()),
            kvs: vec![kv("foo", "bar")],
            more: false,
            count: 1,
        };
        assert_eq!(
            range_json(&r).render(),
            "{\"header\":{\"cluster_id\":14841639068965178418,\"member_id\":10276657743932975437,\
             \"revision\":3,\"raft_term\":2},\"kvs\":[{\"key\":\"Zm9v\",\"create_revision\":2,\
             \"mod_revision\":3,\"version\":2,\"value\":\"YmFy\"}],\"count\":1}"
        );
        let empty = pb::RangeResponse {
            header: Some(header()),
            ..Default::default()
        };
        assert_eq!(
            range_json(&empty).render(),
            "{\"header\":{\"cluster_id\":14841639068965178418,\"member_id\":10276657743932975437,\
             \"revision\":3,\"raft_term\":2}}"
        );
    }

    #[test]
    fn put_del_txn_simple() {
        let put = pb::PutResponse {
            header: Some(header()),
            prev_kv: Some(kv("k", "old")),
        };
        assert_eq!(simple_put(&put, false), "OK\nk\nold\n");
        let del = pb::DeleteRangeResponse {
            header: None,
            deleted: 2,
            prev_kvs: vec![],
        };
        assert_eq!(simple_del(&del, false), "2\n");
        use pb::response_op::Response;
        let txn = pb::TxnResponse {
            header: Some(header()),
            succeeded: true,
            responses: vec![
                pb::ResponseOp {
                    response: Some(Response::ResponsePut(pb::PutResponse::default())),
                },
                pb::ResponseOp {
                    response: Some(Response::ResponseRange(pb::RangeResponse {
                        kvs: vec![kv("a", "1")],
                        count: 1,
                        ..Default::default()
                    })),
                },
            ],
        };
        assert_eq!(simple_txn(&txn, false), "SUCCESS\n\nOK\n\na\n1\n");
        assert_eq!(
            txn_json(&txn).render(),
            "{\"header\":{\"cluster_id\":14841639068965178418,\"member_id\":10276657743932975437,\
             \"revision\":3,\"raft_term\":2},\"succeeded\":true,\"responses\":[{\"Response\":\
             {\"response_put\":{}}},{\"Response\":{\"response_range\":{\"kvs\":[{\"key\":\"YQ==\",\
             \"create_revision\":2,\"mod_revision\":3,\"version\":2,\"value\":\"MQ==\"}],\
             \"count\":1}}}]}"
        );
    }

    #[test]
    fn fields_get() {
        let r = pb::RangeResponse {
            header: Some(header()),
            kvs: vec![kv("foo", "b\"a\nr")],
            more: false,
            count: 1,
        };
        assert_eq!(
            fields_range(&r),
            "\"ClusterID\" : 14841639068965178418\n\"MemberID\" : 10276657743932975437\n\
             \"Revision\" : 3\n\"RaftTerm\" : 2\n\"Key\" : \"foo\"\n\"CreateRevision\" : 2\n\
             \"ModRevision\" : 3\n\"Version\" : 2\n\"Value\" : \"b\\\"a\\nr\"\n\"Lease\" : 0\n\
             \"More\" : false\n\"Count\" : 1\n"
        );
    }

    #[test]
    fn table_like_tablewriter() {
        let t = table(
            &["ID", "Status", "Is Learner"],
            &[vec![
                "8211f1d0f64f3269".into(),
                "started".into(),
                "false".into(),
            ]],
        );
        assert_eq!(
            t,
            "+------------------+---------+------------+\n\
             |        ID        | STATUS  | IS LEARNER |\n\
             +------------------+---------+------------+\n\
             | 8211f1d0f64f3269 | started |      false |\n\
             +------------------+---------+------------+\n"
        );
    }

    #[test]
    fn humanized_sizes() {
        assert_eq!(humanize_bytes(0), "0 B");
        assert_eq!(humanize_bytes(9), "9 B");
        assert_eq!(humanize_bytes(999), "999 B");
        assert_eq!(humanize_bytes(20480), "20 kB");
        assert_eq!(humanize_bytes(1_234_567), "1.2 MB");
        assert_eq!(humanize_bytes(25_000), "25 kB");
    }

    #[test]
    fn go_quoting() {
        assert_eq!(go_quote(b"a\"b\\c\n\x01"), "\"a\\\"b\\\\c\\n\\x01\"");
    }
}
