//! `concord bucket list|get|set` (AP bucket properties) and `concord ap get|put|del` (AP
//! keys), over the members' HTTP JSON API (`/v1/buckets`), trying the endpoints in turn.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

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
    #[command(subcommand)]
    /// The key command.
    pub cmd: ApCmd,
}

/// The AP key commands.
#[derive(Subcommand, Debug)]
pub enum ApCmd {
    /// Reads a key of an AP bucket (Redis GET)
    Get {
        /// The key
        key: String,
        /// Answers to wait for (default: the bucket's r)
        #[arg(long)]
        r: Option<u32>,
    },
    /// Writes a key of an AP bucket (Redis SET)
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
    },
    /// Deletes a key of an AP bucket (Redis DEL)
    Del {
        /// The key
        key: String,
        /// Acknowledgements to wait for (default: the bucket's w)
        #[arg(long)]
        w: Option<u32>,
    },
}

/// The columns of `bucket list` and `bucket get`.
pub const BUCKET_HEADERS: [&str; 6] = ["Bucket", "N", "R", "W", "Durability", "Siblings"];

/// Sends the request to each endpoint in turn until one answers (an HTTP error answer,
/// such as 404 or 400, is final: another member would give the same).
async fn call(
    global: &GlobalArgs,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> CtlResult<Value> {
    let mut last = CtlError::new("no endpoint given");
    for endpoint in &global.endpoints {
        match super::http::request_json(endpoint, method, path, body, global.command_timeout).await
        {
            Ok(v) => return Ok(v),
            Err(e) if e.to_string().contains(": HTTP ") => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
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
    let json_out = g.write_out == OutputFormat::Json;
    match &args.cmd {
        ApCmd::Get { key, r } => {
            let v = call(g, "GET", &path(key, r.map(|r| ("r", r))), None).await?;
            if json_out {
                out(&format!("{v}\n"));
            } else if let Some(text) = v["value"].as_str() {
                out(&format!("{key}\n{text}\n"));
            } else if let Some(members) = v["members"].as_array() {
                // A set: one member per line.
                let lines: Vec<&str> = members.iter().filter_map(|m| m.as_str()).collect();
                out(&format!("{key}\n{}\n", lines.join("\n")));
            } else if let Some(fields) = v["fields"].as_object() {
                // A hash: one field and value per line.
                let lines: Vec<String> = fields
                    .iter()
                    .map(|(f, v)| format!("{f}\t{}", v.as_str().unwrap_or_default()))
                    .collect();
                out(&format!("{key}\n{}\n", lines.join("\n")));
            } else if let Some(members) = v["members_base64"].as_array() {
                let lines: Vec<String> = members.iter().map(|m| format!("(base64) {m}")).collect();
                out(&format!("{key}\n{}\n", lines.join("\n")));
            } else {
                out(&format!("{key}\n(base64) {}\n", v["value_base64"]));
            }
        }
        ApCmd::Put {
            key,
            value,
            ttl_ms,
            w,
        } => {
            let mut body = json!({ "value": value });
            if let Some(t) = ttl_ms {
                body["ttl_ms"] = json!(t);
            }
            let v = call(g, "PUT", &path(key, w.map(|w| ("w", w))), Some(&body)).await?;
            out(&if json_out {
                format!("{v}\n")
            } else {
                "OK\n".to_string()
            });
        }
        ApCmd::Del { key, w } => {
            let v = call(g, "DELETE", &path(key, w.map(|w| ("w", w))), None).await?;
            let deleted = u8::from(v["deleted"].as_bool().unwrap_or(false));
            out(&if json_out {
                format!("{v}\n")
            } else {
                format!("{deleted}\n")
            });
        }
    }
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
