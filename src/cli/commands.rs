//! The client commands: each talks to one node and prints its result.

use std::io::{IsTerminal, Read, Write};

use meshkv_client::{
    proto, EventKind, ReadOptions, ScanOptions, ServingStatus, Token, Version, WatchOptions,
    WriteOptions,
};

use crate::cli::{
    args::{CasArgs, CertsArgs, ClientArgs, Command, LevelArgs},
    error::{Error, Result},
};
/// The outcome of a client command, for the exit code.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done; exit 0.
    Ok,
    /// Key not found or node not serving; exit 1.
    Negative,
}

/// Runs a client command, printing its result.
pub async fn run_client(command: Command) -> Result<Outcome> {
    match command {
        Command::Serve(_) => unreachable!("serve is not a client command"),
        Command::Certs(args) => certs(&args),
        Command::Put {
            key,
            value,
            ttl,
            cas,
            level,
            conn,
        } => put(key, value, ttl, &cas, &level, &conn).await,
        Command::Get {
            key,
            after,
            level,
            conn,
        } => get(key, after, &level, &conn).await,
        Command::Delete {
            key,
            cas,
            level,
            conn,
        } => delete(key, &cas, &level, &conn).await,
        Command::Scan {
            prefix,
            limit,
            page_token,
            keys_only,
            conn,
        } => {
            let opts = ScanOptions {
                limit: limit.unwrap_or(0),
                page_token: page_token.unwrap_or_default(),
                keys_only,
                ..ScanOptions::default()
            };
            scan(prefix, opts, &conn).await
        }
        Command::Watch {
            prefix,
            from,
            progress,
            conn,
        } => watch(prefix, from, progress, &conn).await,
        Command::Bench(args) => bench(args).await,
        Command::Status {
            write_token: Some(token),
            conn,
            ..
        } => write_status(token, &conn).await,
        Command::Status { raw, conn, .. } => status(raw, &conn).await,
        Command::Health { conn } => health(&conn).await,
        Command::Conflicts { conn } => conflicts(&conn).await,
    }
}

fn certs(args: &CertsArgs) -> Result<Outcome> {
    let written =
        meshkv::security::certs::make(&args.dir, &args.nodes, &args.hosts, args.tokens.as_deref())?;
    for p in &written.created {
        println!("created {}", p.display());
    }
    for p in &written.kept {
        println!("kept    {}", p.display());
    }
    Ok(Outcome::Ok)
}

/// Writes `value`, or stdin's bytes for `-`.
async fn put(
    key: String,
    value: String,
    ttl: Option<std::time::Duration>,
    cas: &CasArgs,
    level: &LevelArgs,
    conn: &ClientArgs,
) -> Result<Outcome> {
    if ttl.is_some_and(|t| t.is_zero()) {
        return Err(Error::Usage("--ttl must be more than 0".into()));
    }
    let value = if value == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("cannot read the value from stdin", e))?;
        bytes
    } else {
        value.into_bytes()
    };
    let opts = WriteOptions {
        consistency: level.level(),
        ttl,
        expect: cas.expect(),
        timeout: None,
    };
    let written = conn
        .client()?
        .write(key, value, opts)
        .await
        .map_err(conn.failed())?;
    println!("OK {} {}", written.version, written.token);
    Ok(Outcome::Ok)
}

/// Prints the value's exact bytes (with a newline only for text on a terminal).
async fn get(
    key: String,
    after: Vec<String>,
    level: &LevelArgs,
    conn: &ClientArgs,
) -> Result<Outcome> {
    let opts = ReadOptions {
        consistency: level.level(),
        after: after.into_iter().map(Token).collect(),
        timeout: None,
    };
    let found = conn
        .client()?
        .read(key.clone(), opts)
        .await
        .map_err(conn.failed())?;
    let Some(entry) = found else {
        eprintln!("key {key:?} not found");
        return Ok(Outcome::Negative);
    };
    let mut out = std::io::stdout().lock();
    let newline = needs_newline(&entry.value, out.is_terminal());
    out.write_all(&entry.value)
        .and_then(|()| out.write_all(if newline { b"\n" } else { b"" }))
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("cannot write to stdout", e))?;
    Ok(Outcome::Ok)
}

async fn delete(
    key: String,
    cas: &CasArgs,
    level: &LevelArgs,
    conn: &ClientArgs,
) -> Result<Outcome> {
    let opts = WriteOptions {
        consistency: level.level(),
        expect: cas.expect(),
        ..WriteOptions::default()
    };
    let written = conn
        .client()?
        .delete(key, opts)
        .await
        .map_err(conn.failed())?;
    println!("OK {} {}", written.version, written.token);
    Ok(Outcome::Ok)
}

/// Prints a scan's keys as they stream in; the page token to go on with,
/// if a limit stopped it, on stderr.
async fn scan(prefix: String, opts: ScanOptions, conn: &ClientArgs) -> Result<Outcome> {
    let keys_only = opts.keys_only;
    let fail = conn.failed();
    let mut pages = conn
        .client()?
        .scan_pages(prefix, opts)
        .await
        .map_err(&fail)?;
    let mut out = std::io::stdout().lock();
    let mut token = String::new();
    while let Some(page) = pages.next_page().await.map_err(&fail)? {
        for e in page.entries {
            let line = if keys_only {
                format!("{}\n", e.key)
            } else {
                format!("{}\t{}\n", e.key, shown(&e.value))
            };
            out.write_all(line.as_bytes())
                .map_err(|e| Error::io("cannot write to stdout", e))?;
        }
        token = page.next_page_token;
    }
    out.flush()
        .map_err(|e| Error::io("cannot write to stdout", e))?;
    if !token.is_empty() {
        eprintln!("more keys follow: --page-token {token}");
    }
    Ok(Outcome::Ok)
}

/// Prints a watch's events as they arrive, until the stream ends.
async fn watch(
    prefix: String,
    from: Option<String>,
    progress: Option<std::time::Duration>,
    conn: &ClientArgs,
) -> Result<Outcome> {
    let opts = WatchOptions {
        resume_token: from,
        progress,
    };
    let fail = conn.failed();
    let mut events = conn.client()?.watch(prefix, opts).await.map_err(&fail)?;
    let mut out = std::io::stdout().lock();
    while let Some(ev) = events.next().await.map_err(&fail)? {
        let line = match ev.kind {
            EventKind::Progress if progress.is_none() => continue,
            EventKind::Progress => format!("PROGRESS\t\t\t{}\n", ev.token),
            EventKind::SnapshotEnd => format!("SNAPSHOT_END\t\t\t{}\n", ev.token),
            EventKind::Put if ev.snapshot => {
                format!("SNAPSHOT\t{}\t{}\t{}\n", ev.key, shown(&ev.value), ev.token)
            }
            EventKind::Put => format!("PUT\t{}\t{}\t{}\n", ev.key, shown(&ev.value), ev.token),
            EventKind::Delete => format!("DELETE\t{}\t\t{}\n", ev.key, ev.token),
            EventKind::Expire => format!("EXPIRE\t{}\t\t{}\n", ev.key, ev.token),
        };
        out.write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| Error::io("cannot write to stdout", e))?;
    }
    Ok(Outcome::Ok)
}

/// A value on one line: its text, or its size when it is not UTF-8 or
/// holds a line break.
fn shown(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(t) if !t.contains(['\n', '\r']) => t.to_string(),
        _ => format!("<{} bytes>", value.len()),
    }
}

/// Runs the load and prints its report, as a table or JSON.
async fn bench(args: crate::cli::bench::BenchArgs) -> Result<Outcome> {
    let json = args.json;
    let report = crate::cli::bench::run(args).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report)
                .map_err(|e| Error::Usage(format!("cannot render the report as JSON: {e}")))?
        );
    } else {
        print!("{}", report.table());
    }
    Ok(if report.requests > 0 {
        Outcome::Ok
    } else {
        Outcome::Negative
    })
}

async fn status(raw: bool, conn: &ClientArgs) -> Result<Outcome> {
    let status = conn
        .client()?
        .cluster_status()
        .await
        .map_err(conn.failed())?;
    if raw {
        println!("{status:#?}");
    } else {
        print!("{}", format_status(&status));
    }
    Ok(Outcome::Ok)
}

/// Prints which peers hold the write of `token`; exit 1 unless every
/// peer has it.
async fn write_status(token: String, conn: &ClientArgs) -> Result<Outcome> {
    let status = conn
        .client()?
        .write_status(&Token(token))
        .await
        .map_err(conn.failed())?;
    print!("{}", format_write_status(&status));
    let everywhere = status.applied_here && status.peers.iter().all(|p| p.applied);
    Ok(if everywhere && !status.peers.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Negative
    })
}

/// A write's progress, a line per peer.
fn format_write_status(s: &proto::WriteStatusResponse) -> String {
    let mut out = format!(
        "write {} of {}: {}\n",
        s.seq,
        s.origin,
        if s.applied_here {
            "applied on this node"
        } else {
            "not yet applied on this node"
        }
    );
    if s.peers.is_empty() {
        out.push_str(&format!(
            "ask {} for each peer's progress: only the node that took a write tracks it\n",
            s.origin
        ));
    }
    for p in &s.peers {
        let state = match (p.applied, p.connected) {
            (true, _) => "applied".to_string(),
            (false, true) => format!("replicating, {} writes behind", p.behind),
            (false, false) => format!("disconnected, {} writes behind", p.behind),
        };
        out.push_str(&format!("{:<16} {state} (acked {})\n", p.peer, p.acked_seq));
    }
    out
}

/// Prints the node's conflict ledger, newest first.
async fn conflicts(conn: &ClientArgs) -> Result<Outcome> {
    let conflicts = conn.client()?.conflicts().await.map_err(conn.failed())?;
    for c in &conflicts {
        let kind = match c.kind() {
            proto::conflict::Kind::Lost => "LOST",
            proto::conflict::Kind::Replaced => "REPLACED",
            proto::conflict::Kind::Unspecified => "?",
        };
        println!(
            "{kind}\t{}\t{}\t{}\t{}",
            c.key,
            show_version(c.kept.as_ref()),
            show_version(c.lost.as_ref()),
            c.peer
        );
    }
    if conflicts.is_empty() {
        eprintln!("no conflicts since this node started");
    }
    Ok(Outcome::Ok)
}

/// Prints SERVING or why not; exit 1 unless serving.
async fn health(conn: &ClientArgs) -> Result<Outcome> {
    let status = conn.client()?.health().await.map_err(conn.failed())?;
    println!("{}", status.as_str_name());
    Ok(if status == ServingStatus::Serving {
        Outcome::Ok
    } else {
        Outcome::Negative
    })
}

/// Renders ClusterStatus as a header line and a table of peers.
pub fn format_status(s: &proto::ClusterStatusResponse) -> String {
    let mut out = format!(
        "node {} (cluster {}): {}\nkeys {}  last_seq {}  log_first_seq {}  fingerprint {:016x}\n",
        s.node_id, s.cluster_id, s.health, s.keys, s.last_seq, s.log_first_seq, s.fingerprint
    );
    // Last, so that the header and the table keep their lines for scripts.
    let security = if s.security.is_empty() {
        String::new()
    } else {
        format!("security: {}\n", s.security)
    };
    if s.peers.is_empty() {
        out.push_str("no peers configured\n");
        out.push_str(&security);
        return out;
    }
    let header = [
        "PEER",
        "URL",
        "CONNECTED",
        "PHASE",
        "ACKED",
        "BACKLOG",
        "BACKLOG_BYTES",
        "LAG_S",
        "REPAIRS",
        "REPAIRED",
        "REFUSED",
        "TOMBS_WAITING",
        "CONFLICTS",
        "CLOCK_OFFSET_MS",
        "LAST_ERROR",
    ];
    let rows: Vec<Vec<String>> = s
        .peers
        .iter()
        .map(|p| {
            vec![
                p.id.clone(),
                p.url.clone(),
                if p.connected { "yes" } else { "no" }.into(),
                p.phase.clone(),
                p.acked_seq.to_string(),
                p.backlog_entries.to_string(),
                p.backlog_bytes.to_string(),
                format!("{:.1}", p.lag_seconds),
                p.repair_rounds.to_string(),
                p.keys_repaired.to_string(),
                p.refused.to_string(),
                p.tombstones_waiting.to_string(),
                // Lost/replaced, as Admin/Conflicts lists them.
                format!("{}/{}", p.conflicts_lost, p.conflicts_replaced),
                if p.clock_samples == 0 {
                    "-".into()
                } else {
                    format!("{:+}", p.clock_offset_ms)
                },
                if p.last_error.is_empty() {
                    "-".into()
                } else {
                    p.last_error.clone()
                },
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut l = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        l.truncate(l.trim_end().len());
        l.push('\n');
        l
    };
    out.push_str(&line(header.to_vec()));
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out.push_str(&security);
    out
}

/// Whether `meshkv get` ends its output with a newline of its own: only on a
/// terminal, and only after text that lacks one. Redirected output is the
/// value byte for byte; binary data never gets a byte added.
fn needs_newline(value: &[u8], terminal: bool) -> bool {
    terminal && !value.is_empty() && !value.ends_with(b"\n") && std::str::from_utf8(value).is_ok()
}

fn show_version(v: Option<&proto::Version>) -> String {
    v.map(|v| {
        Version {
            hlc: v.hlc,
            node: v.node_id.clone(),
        }
        .to_string()
    })
    .unwrap_or_else(|| "(no version)".into())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;
    use crate::cli::{
        connect::{describe_status, parse_duration, parse_endpoint},
        Cli,
    };

    #[test]
    fn debug_output_never_shows_a_token() {
        let cli =
            Cli::try_parse_from(["meshkv", "get", "k", "--token", "sekrit-sekrit-sekrit"]).unwrap();
        let text = format!("{cli:?}");
        assert!(!text.contains("sekrit"), "{text}");
        assert!(text.contains("redacted"), "{text}");
    }

    #[test]
    fn failed_requests_read_as_one_sentence() {
        use tonic::{Code, Status};
        let ep = "http://n1:50051";
        let t = Duration::from_secs(10);
        let say = |s: Status| describe_status(ep, t, &s);
        let refused = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(
            say(refused),
            "cannot connect to http://n1:50051: connection refused \
             (is a node running there? set --endpoint)"
        );
        let line = say(Status::cancelled("Timeout expired"));
        assert!(line.contains("did not answer within 10s"), "{line}");
        let line = say(Status::invalid_argument("key is empty"));
        assert_eq!(line, "http://n1:50051 refused the request: key is empty");
        let line = say(Status::resource_exhausted("overloaded: queue full"));
        assert!(line.contains("retry later"), "{line}");
        let line = say(Status::new(
            Code::Unimplemented,
            "grpc-status header missing, mapped from HTTP status code 404",
        ));
        assert!(
            line.contains("does not answer like a meshkv node"),
            "{line}"
        );
        for s in [
            Status::internal("x"),
            Status::unavailable("shutting down"),
            Status::out_of_range("decoded message length too large"),
        ] {
            let line = say(s);
            assert!(line.starts_with(ep) && !line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn endpoints_must_be_http_urls() {
        assert!(parse_endpoint("http://127.0.0.1:50051").is_ok());
        assert!(parse_endpoint("https://node2:443").is_ok());
        for bad in ["foo", "127.0.0.1:50051", "ftp://h:1", "http://", ""] {
            let err = parse_endpoint(bad).unwrap_err();
            assert!(err.contains("http://HOST:PORT"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn get_adds_a_newline_only_to_text_on_a_terminal() {
        assert!(needs_newline(b"hello", true));
        assert!(!needs_newline(b"hello", false), "redirected: exact bytes");
        assert!(!needs_newline(b"hello\n", true), "already ends in one");
        assert!(!needs_newline(b"", true));
        assert!(!needs_newline(&[0xff, 0xfe, 0x00], true), "binary");
    }

    #[test]
    fn durations_take_units_and_bare_numbers_are_seconds() {
        let ms = Duration::from_millis;
        let cases = [
            ("5s", ms(5_000)),
            ("500ms", ms(500)),
            ("1ms", ms(1)),
            ("2m", ms(120_000)),
            ("1h", ms(3_600_000)),
            ("10", ms(10_000)),
            ("0.5", ms(500)),
            ("1.5s", ms(1_500)),
            ("0.25m", ms(15_000)),
            ("0", Duration::ZERO),
            (" 3 s ", ms(3_000)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn bad_durations_are_refused_with_the_accepted_forms() {
        for text in [
            "", "s", "5x", "5sec", "-1s", "1e3", "1.2.3s", "5 m s", "1m30s", "ms5",
        ] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains(&format!("{text:?}")), "{err}");
            assert!(err.contains("500ms, 5s, 2m"), "{err}");
        }
        let err = parse_duration("99999999999999999h").unwrap_err();
        assert!(err.contains("too long"), "{err}");
    }

    #[test]
    fn duration_flags_use_the_parser() {
        let cli = Cli::try_parse_from(["meshkv", "get", "k", "--timeout", "250ms"]).unwrap();
        let Some(Command::Get { conn, .. }) = cli.command else {
            panic!("not get");
        };
        assert_eq!(conn.timeout, Duration::from_millis(250));
        // The old spelling and its bare seconds still work.
        let cli = Cli::try_parse_from(["meshkv", "health", "--timeout-secs", "2"]).unwrap();
        let Some(Command::Health { conn }) = cli.command else {
            panic!("not health");
        };
        assert_eq!(conn.timeout, Duration::from_secs(2));
        let err = Cli::try_parse_from(["meshkv", "get", "k", "--timeout", "soon"]).unwrap_err();
        assert!(err.to_string().contains("not a duration"), "{err}");
    }
}
