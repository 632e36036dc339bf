//! `concord bucket list|get|set` (AP bucket properties) and `concord ap get|put|del|cmd`
//! (AP keys: values, siblings and their context, compare-and-set by digest, any Redis data
//! command, sessions kept in a file), over the members' HTTP JSON API (`/v1/buckets`),
//! trying the endpoints in turn.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::http::Answer;
use super::{out, printer, CtlError, CtlResult, GlobalArgs, OutputFormat};

/// `concord bucket`.
#[derive(Args, Debug)]
pub struct BucketArgs {
    #[command(flatten)]
    /// Global flags.
    pub global: GlobalArgs,
    #[command(subcommand)]
    /// The bucket command.
    pub cmd: BucketCmd,
}

/// The bucket commands.
#[derive(Subcommand, Debug)]
pub enum BucketCmd {
    /// Lists every AP bucket (Redis databases 0-15) with its properties
    List,
    /// Shows one bucket's properties and the keys the endpoint's member holds in it
    Get {
        /// The bucket (0-15)
        bucket: u8,
    },
    /// Changes a bucket's properties cluster-wide (what is not given stays)
    Set {
        /// The bucket (0-15)
        bucket: u8,
        /// Replicas per key
        #[arg(long)]
        n_val: Option<u32>,
        /// Answers a read waits for: a number, or "quorum" (a majority of n_val)
        #[arg(long)]
        r: Option<String>,
        /// Acknowledgements a write waits for: a number, or "quorum"
        #[arg(long)]
        w: Option<String>,
        /// When replicas acknowledge: "fsync" (after the fsync) or "async"
        #[arg(long)]
        durability: Option<String>,
        /// Keep concurrent writes of a key as siblings ("yes") or the last one ("no")
        #[arg(long, value_parser = ["yes", "no"])]
        siblings: Option<String>,
    },
}

/// `concord ap`.
#[derive(Args, Debug)]
pub struct ApArgs {
    #[command(flatten)]
    /// Global flags.
    pub global: GlobalArgs,
    /// The bucket (0-15; Redis's SELECT)
    #[arg(long, default_value_t = 0, global = true)]
    pub bucket: u8,
    /// Run in the session whose token this file holds (a new one when the file is absent
    /// or empty) and write the session's new token back to it: successive commands then
    /// read their own writes and never go back in time, at any member
    #[arg(long, global = true, value_name = "FILE")]
    pub session_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    /// The key command.
    pub cmd: ApCmd,
}

/// The AP key commands.
#[derive(Subcommand, Debug)]
pub enum ApCmd {
    /// Reads a key of an AP bucket (Redis GET; in a bucket that keeps siblings, every
    /// sibling and the causal context)
    Get {
        /// The key
        key: String,
        /// Answers to wait for (default: the bucket's r)
        #[arg(long)]
        r: Option<u32>,
    },
    /// Writes a key of an AP bucket (Redis SET); with a condition, a compare-and-set
    Put {
        /// The key
        key: String,
        /// The value
        value: String,
        /// Expire after this many milliseconds
        #[arg(long)]
        ttl_ms: Option<u64>,
        /// Acknowledgements to wait for (default: the bucket's w)
        #[arg(long)]
        w: Option<u32>,
        #[command(flatten)]
        condition: Condition,
        /// The causal context from `get` (buckets that keep siblings): replaces exactly
        /// the siblings read; without it the value is added as a sibling
        #[arg(long)]
        context: Option<String>,
    },
    /// Deletes a key of an AP bucket (Redis DEL)
    Del {
        /// The key
        key: String,
        /// Acknowledgements to wait for (default: the bucket's w)
        #[arg(long)]
        w: Option<u32>,
        /// Delete only while the value has this digest (`get -w json` shows it)
        #[arg(long, value_name = "DIGEST")]
        if_match: Option<String>,
        /// The causal context from `get` (buckets that keep siblings)
        #[arg(long)]
        context: Option<String>,
    },
    /// Runs a Redis data command on a key (`concord ap cmd myset SADD a b`), with the
    /// same semantics as over RESP
    Cmd {
        /// The key
        key: String,
        /// The command (SADD, HGETALL, INCRBY, SET ... NX, ...)
        command: String,
        /// Its arguments after the key (after `--` when one starts with `-` and is not a
        /// number)
        #[arg(allow_negative_numbers = true)]
        args: Vec<String>,
    },
}

/// The condition of a compare-and-set `put` (at most one).
#[derive(Args, Debug, Default)]
#[group(multiple = false)]
pub struct Condition {
    /// Write only if the key does not exist (SET NX)
    #[arg(long)]
    if_absent: bool,
    /// Write only if the key exists (SET XX)
    #[arg(long)]
    if_present: bool,
    /// Write only while the value has this digest (SET IFDEQ; `get -w json` shows it)
    #[arg(long, value_name = "DIGEST")]
    if_match: Option<String>,
    /// Write only while the value does not have this digest (SET IFDNE)
    #[arg(long, value_name = "DIGEST")]
    if_none_match: Option<String>,
}

impl Condition {
    /// The request header that carries it.
    fn header(&self) -> Option<(&'static str, String)> {
        let etag = |d: &str| format!("\"{d}\"");
        if self.if_absent {
            Some(("If-None-Match", "*".into()))
        } else if self.if_present {
            Some(("If-Match", "*".into()))
        } else if let Some(d) = &self.if_match {
            Some(("If-Match", etag(d)))
        } else {
            self.if_none_match
                .as_deref()
                .map(|d| ("If-None-Match", etag(d)))
        }
    }
}

/// The columns of `bucket list` and `bucket get`.
pub const BUCKET_HEADERS: [&str; 6] = ["Bucket", "N", "R", "W", "Durability", "Siblings"];

/// Sends the request to each endpoint in turn until one answers (any HTTP answer, such
/// as 404 or 400, is final: another member would give the same); the endpoint and answer.
async fn call_with(
    global: &GlobalArgs,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<&Value>,
) -> CtlResult<(String, Answer)> {
    let mut last = CtlError::new("no endpoint given");
    for endpoint in &global.endpoints {
        let timeout = global.command_timeout;
        match super::http::request(endpoint, method, path, headers, body, timeout).await {
            Ok(answer) => return Ok((endpoint.clone(), answer)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// [`call_with`] without headers; an answer other than 200 is an error.
async fn call(
    global: &GlobalArgs,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> CtlResult<Value> {
    let (endpoint, answer) = call_with(global, method, path, &[], body).await?;
    if answer.status != 200 {
        return Err(answer.error(&endpoint));
    }
    Ok(answer.body)
}

fn row(p: &Value) -> CtlResult<Vec<String>> {
    let bad = || CtlError::new("unexpected answer from /v1/buckets");
    let quorum = |name: &str, in_force: &str| -> CtlResult<String> {
        let n = p[in_force].as_u64().ok_or_else(bad)?;
        Ok(if p[name].is_string() {
            format!("quorum ({n})")
        } else {
            n.to_string()
        })
    };
    Ok(vec![
        p["bucket"].as_u64().ok_or_else(bad)?.to_string(),
        p["n_val"].as_u64().ok_or_else(bad)?.to_string(),
        quorum("r", "r_in_force")?,
        quorum("w", "w_in_force")?,
        p["durability"].as_str().ok_or_else(bad)?.to_string(),
        if p["siblings"].as_bool().unwrap_or(false) {
            "yes"
        } else {
            "no"
        }
        .to_string(),
    ])
}

fn print_buckets(global: &GlobalArgs, whole: &Value, buckets: &[Value]) -> CtlResult<()> {
    if global.write_out == OutputFormat::Json {
        out(&format!("{whole}\n"));
        return Ok(());
    }
    let rows = buckets.iter().map(row).collect::<CtlResult<Vec<_>>>()?;
    out(&match global.write_out {
        OutputFormat::Table => printer::table(&BUCKET_HEADERS, &rows),
        _ => printer::comma_rows(&rows),
    });
    Ok(())
}

/// `"quorum"` or a number, as the HTTP API takes it.
fn quorum_arg(name: &str, v: &str) -> CtlResult<Value> {
    if v.eq_ignore_ascii_case("quorum") {
        return Ok(json!("quorum"));
    }
    v.parse::<u32>()
        .map(|n| json!(n))
        .map_err(|_| CtlError::new(format!("--{name} must be a number or \"quorum\"")))
}

/// Runs `concord bucket ...`.
pub async fn run_bucket(args: BucketArgs) -> CtlResult<()> {
    let g = &args.global;
    match args.cmd {
        BucketCmd::List => {
            let v = call(g, "GET", "/v1/buckets", None).await?;
            let all = v["buckets"].as_array().cloned().unwrap_or_default();
            print_buckets(g, &v, &all)
        }
        BucketCmd::Get { bucket } => {
            let v = call(g, "GET", &format!("/v1/buckets/{bucket}"), None).await?;
            print_buckets(g, &v, std::slice::from_ref(&v))
        }
        BucketCmd::Set {
            bucket,
            n_val,
            r,
            w,
            durability,
            siblings,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(n) = n_val {
                body.insert("n_val".into(), json!(n));
            }
            if let Some(r) = r {
                body.insert("r".into(), quorum_arg("r", &r)?);
            }
            if let Some(w) = w {
                body.insert("w".into(), quorum_arg("w", &w)?);
            }
            if let Some(d) = durability {
                body.insert("durability".into(), json!(d.to_ascii_lowercase()));
            }
            if let Some(s) = siblings {
                body.insert("siblings".into(), json!(s == "yes"));
            }
            if body.is_empty() {
                return Err(CtlError::new(
                    "nothing to change: give --n-val, --r, --w, --durability or --siblings",
                ));
            }
            let v = call(
                g,
                "PUT",
                &format!("/v1/buckets/{bucket}"),
                Some(&Value::Object(body)),
            )
            .await?;
            print_buckets(g, &v, std::slice::from_ref(&v))
        }
    }
}

/// `key` percent-encoded for a URL path (unreserved characters kept).
fn encode_key(key: &str) -> String {
    let mut s = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The session header to send for `--session-file` (empty: start a session).
fn session_header(file: &std::path::Path) -> CtlResult<(&'static str, String)> {
    let token = match std::fs::read_to_string(file) {
        Ok(text) => text.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(CtlError::new(format!("{}: {e}", file.display()))),
    };
    Ok(("Concord-Session", token))
}

/// A value of a JSON answer as one line of text (bytes that are not UTF-8 as base64).
fn value_line(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "(nil)".into(),
        Value::Object(o) if o.len() == 1 && o.contains_key("base64") => {
            format!("(base64) {}", o["base64"].as_str().unwrap_or_default())
        }
        Value::Object(o) => match (o.get("value"), o.get("value_base64")) {
            (Some(v), _) => value_line(v),
            (_, Some(b)) => format!("(base64) {}", b.as_str().unwrap_or_default()),
            _ => v.to_string(),
        },
        other => other.to_string(),
    }
}

/// `concord ap cmd`'s result as lines: one per element of an array, `field<TAB>value`
/// per entry of a map.
fn result_lines(result: &Value) -> String {
    let mut text = match result {
        Value::Array(items) if items.is_empty() => "(empty)".into(),
        Value::Array(items) => items.iter().map(value_line).collect::<Vec<_>>().join("\n"),
        Value::Object(o) if !o.contains_key("base64") => o
            .iter()
            .map(|(k, v)| format!("{k}\t{}", value_line(v)))
            .collect::<Vec<_>>()
            .join("\n"),
        other => value_line(other),
    };
    text.push('\n');
    text
}

/// What `get` prints of a key (simple format).
fn key_lines(key: &str, v: &Value) -> String {
    let lines: Vec<String> = if let Some(siblings) = v["siblings"].as_array() {
        siblings.iter().map(value_line).collect()
    } else if let Some(members) = v["members"].as_array() {
        // A set: one member per line.
        members.iter().map(value_line).collect()
    } else if let Some(members) = v["members_base64"].as_array() {
        members
            .iter()
            .map(|m| format!("(base64) {}", m.as_str().unwrap_or_default()))
            .collect()
    } else if let Some(fields) = v["fields"].as_object() {
        // A hash: one field and value per line.
        fields
            .iter()
            .map(|(f, v)| format!("{f}\t{}", value_line(v)))
            .collect()
    } else if let Some(pairs) = v["fields_base64"].as_array() {
        pairs
            .iter()
            .map(|p| {
                format!(
                    "(base64) {}\t(base64) {}",
                    p[0].as_str().unwrap_or_default(),
                    p[1].as_str().unwrap_or_default()
                )
            })
            .collect()
    } else {
        vec![value_line(v)]
    };
    format!("{key}\n{}\n", lines.join("\n"))
}

/// Runs `concord ap ...`.
pub async fn run_ap(args: ApArgs) -> CtlResult<()> {
    let g = &args.global;
    let path = |key: &str, q: Option<(&str, u32)>| {
        let mut p = format!("/v1/buckets/{}/keys/{}", args.bucket, encode_key(key));
        if let Some((name, v)) = q {
            p.push_str(&format!("?{name}={v}"));
        }
        p
    };
    let mut headers = Vec::new();
    if let Some(file) = &args.session_file {
        headers.push(session_header(file)?);
    }
    let context = |c: &Option<String>| c.clone().map(|c| ("Concord-Context", c));
    let (method, path, body) = match &args.cmd {
        ApCmd::Get { key, r } => ("GET", path(key, r.map(|r| ("r", r))), None),
        ApCmd::Put {
            key,
            value,
            ttl_ms,
            w,
            condition,
            context: ctx,
        } => {
            let mut body = json!({ "value": value });
            if let Some(t) = ttl_ms {
                body["ttl_ms"] = json!(t);
            }
            headers.extend(condition.header());
            headers.extend(context(ctx));
            ("PUT", path(key, w.map(|w| ("w", w))), Some(body))
        }
        ApCmd::Del {
            key,
            w,
            if_match,
            context: ctx,
        } => {
            headers.extend(if_match.as_ref().map(|d| ("If-Match", format!("\"{d}\""))));
            headers.extend(context(ctx));
            ("DELETE", path(key, w.map(|w| ("w", w))), None)
        }
        ApCmd::Cmd { key, command, args } => {
            let body = json!({ "command": command, "args": args });
            ("POST", path(key, None), Some(body))
        }
    };
    let (endpoint, answer) = call_with(g, method, &path, &headers, body.as_ref()).await?;
    // The session goes on also after a refusal.
    if let (Some(file), Some(token)) = (&args.session_file, answer.header("concord-session")) {
        std::fs::write(file, format!("{token}\n"))
            .map_err(|e| CtlError::new(format!("{}: {e}", file.display())))?;
    }
    let found_siblings = answer.status == 300 && matches!(args.cmd, ApCmd::Get { .. });
    if answer.status == 412 {
        // A compare-and-set whose condition failed: not an error, nothing written.
        out(&if g.write_out == OutputFormat::Json {
            format!("{}\n", answer.body)
        } else {
            "0\n".into()
        });
        return Ok(());
    }
    if answer.status != 200 && !found_siblings {
        return Err(answer.error(&endpoint));
    }
    let mut body = answer.body.clone();
    let ctx = answer.header("concord-context");
    if let Some(ctx) = ctx {
        body["context"] = json!(ctx);
    }
    if g.write_out == OutputFormat::Json {
        out(&format!("{body}\n"));
        return Ok(());
    }
    out(&match &args.cmd {
        ApCmd::Get { key, .. } => {
            let mut text = key_lines(key, &body);
            if let Some(ctx) = ctx {
                text.push_str(&format!("(context) {ctx}\n"));
            }
            text
        }
        ApCmd::Put { condition, .. } if condition.header().is_some() => "1\n".into(),
        ApCmd::Put { .. } => "OK\n".into(),
        ApCmd::Del { .. } => format!("{}\n", u8::from(body["deleted"].as_bool().unwrap_or(false))),
        ApCmd::Cmd { .. } => result_lines(&body["result"]),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded_and_quorums_parsed() {
        assert_eq!(encode_key("a/b c%é"), "a%2Fb%20c%25%C3%A9");
        assert_eq!(encode_key("plain-key_1.x~"), "plain-key_1.x~");
        assert_eq!(quorum_arg("r", "QUORUM").unwrap(), json!("quorum"));
        assert_eq!(quorum_arg("r", "2").unwrap(), json!(2));
        assert!(quorum_arg("w", "two").is_err());
    }
}
