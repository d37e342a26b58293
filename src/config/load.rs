//! The layering: defaults → TOML file → `MESHKV_*` environment → flags,
//! each error naming its source, key and reason.

use std::{collections::BTreeMap, path::Path};

use crate::{
    config::{Config, Overrides, PeerConfig},
    error::{Error, Result},
};

/// Parses `ID=URL`, the form of `--peer` and of `MESHKV_PEERS` items.
pub fn parse_peer(s: &str) -> std::result::Result<PeerConfig, String> {
    match s.split_once('=') {
        Some((id, url)) if !id.is_empty() && !url.is_empty() => Ok(PeerConfig {
            id: id.trim().to_string(),
            url: url.trim().to_string(),
        }),
        _ => Err(format!("expected ID=URL, got {s:?}")),
    }
}

/// Environment variables the CLI reads itself; they are not config keys.
const CLI_ONLY_ENV: &[&str] = &[
    "MESHKV_ENDPOINT",
    "MESHKV_CONFIG",
    "MESHKV_TOKEN",
    "MESHKV_CACERT",
    "MESHKV_CERT",
    "MESHKV_KEY",
];

/// Prefixes of variables the project's own test tools read (the simulation,
/// the planted bugs); a node started while they are set stays quiet.
const TOOL_ENV_PREFIXES: &[&str] = &["MESHKV_SIM_", "MESHKV_PLANTED_"];

/// A loaded configuration and what was wrong with the environment but not
/// fatal. The warnings are returned rather than printed because loading runs
/// before logging is set up, and they belong in the node's log.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration, validated.
    pub config: Config,
    /// One sentence per ignored `MESHKV_*` variable, for the log.
    pub warnings: Vec<String>,
}

/// Builds the configuration from all layers and validates it.
///
/// The file is strict: an unknown key is an error. The environment is not,
/// because orchestrators put their own `MESHKV_*` variables there (Kubernetes
/// adds `MESHKV_PORT`, `MESHKV_SERVICE_HOST`, ... for a service named
/// meshkv): an unknown variable becomes a warning that names the nearest
/// known one. A known variable with a bad value is still an error.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: Overrides,
) -> Result<Loaded> {
    let mut table = match file {
        Some(path) => read_file(path)?,
        None => toml::Table::new(),
    };
    let warnings = apply_env(&mut table, env)?;
    let mut config: Config = table.try_into().map_err(|e| Error::Config(e.to_string()))?;
    overrides.apply(&mut config);
    config.validate()?;
    Ok(Loaded { config, warnings })
}

/// The config file as a table, checked on its own so that its errors point
/// at the file.
fn read_file(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    table
        .clone()
        .try_into::<Config>()
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    Ok(table)
}

/// Layers the `MESHKV_*` variables of `env` over `table`; warnings for the
/// unknown ones.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>> {
    let known = env_keys();
    let mut warnings = Vec::new();
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| {
            name.starts_with("MESHKV_")
                && !CLI_ONLY_ENV.contains(&name.as_str())
                && !TOOL_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
        })
        .collect();
    // The process environment has no order; sort so that errors and warnings do.
    env.sort();
    for (name, raw) in env {
        let Some(default) = known.get(&name.to_ascii_uppercase()) else {
            warnings.push(unknown_env_warning(&name, known.keys()));
            continue;
        };
        // One line: serde puts the key's path on a line of its own.
        let in_var = |e: String| {
            Error::Config(format!(
                "environment variable {name}: {}",
                e.replace('\n', " ")
            ))
        };
        let value = if name.eq_ignore_ascii_case("MESHKV_PEERS") {
            let peers = raw
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| parse_peer(s).map(|p| toml::Value::try_from(p).expect("plain struct")))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(in_var)?;
            toml::Value::Array(peers)
        } else {
            env_value(&raw, default)
        };
        let path: Vec<String> = name["MESHKV_".len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        set_path(table, &path, value).map_err(in_var)?;
        // Deserialize after each variable so that an error names the one at fault.
        table
            .clone()
            .try_into::<Config>()
            .map_err(|e| in_var(e.to_string()))?;
    }
    Ok(warnings)
}

impl Overrides {
    /// Sets every flag that was given over `config`: the top layer.
    fn apply(self, config: &mut Config) {
        let Overrides {
            node_id,
            cluster_id,
            listen,
            data_dir,
            peers,
            log_format,
            fsync,
            metrics_listen,
            peer_listen,
            insecure,
            tls,
            tokens_file,
        } = self;
        if peer_listen.is_some() {
            config.peer_listen = peer_listen;
        }
        if insecure {
            config.insecure = true;
        }
        for (have, set) in [
            (&mut config.tls.cert, tls.cert),
            (&mut config.tls.key, tls.key),
            (&mut config.tls.ca, tls.ca),
            (&mut config.auth.tokens_file, tokens_file),
        ] {
            if set.is_some() {
                *have = set;
            }
        }
        if let Some(v) = metrics_listen {
            config.metrics_listen = Some(v);
        }
        if let Some(v) = node_id {
            config.node_id = v;
        }
        if let Some(v) = cluster_id {
            config.cluster_id = v;
        }
        if let Some(v) = listen {
            config.listen = v;
        }
        if let Some(v) = data_dir {
            config.data_dir = v;
        }
        if !peers.is_empty() {
            config.peers = peers;
        }
        if let Some(v) = log_format {
            config.log_format = v;
        }
        if let Some(v) = fsync {
            config.storage.fsync = v;
        }
    }
}

/// Every config key as its environment variable name, with its default.
///
/// Derived from `Config::default()` so that it cannot drift from the structs.
/// JSON rather than TOML because TOML drops keys whose default is `None`.
pub(super) fn env_keys() -> BTreeMap<String, serde_json::Value> {
    fn walk(
        prefix: &str,
        map: &serde_json::Map<String, serde_json::Value>,
        out: &mut BTreeMap<String, serde_json::Value>,
    ) {
        for (key, value) in map {
            let name = format!("{prefix}{}", key.to_ascii_uppercase());
            match value {
                serde_json::Value::Object(table) => walk(&format!("{name}__"), table, out),
                leaf => {
                    out.insert(name, leaf.clone());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(map)) => walk("MESHKV_", &map, &mut out),
        other => unreachable!("Config serializes to a JSON object, not {other:?}"),
    }
    out
}

/// The warning for a `MESHKV_*` variable that is no config key, naming the
/// nearest known variable when it looks like a typo of one.
pub(super) fn unknown_env_warning<'a>(
    name: &str,
    known: impl Iterator<Item = &'a String>,
) -> String {
    let upper = name.to_ascii_uppercase();
    let rest = &upper["MESHKV_".len()..];
    // A third of the name may differ, and at most two edits: closer than
    // that is a typo, further is someone else's variable.
    let limit = (rest.len() / 3).min(2);
    let nearest = known
        .map(|k| (edit_distance(rest, &k["MESHKV_".len()..]), k))
        .filter(|(d, _)| *d <= limit)
        .min();
    match nearest {
        Some((_, k)) => {
            format!("ignoring unknown environment variable {name}; did you mean {k}?")
        }
        None => format!("ignoring unknown environment variable {name}: it is no meshkv config key"),
    }
}

/// Edits (insert, delete, substitute, swap two neighbours) that turn `a`
/// into `b`: the optimal string alignment distance, over bytes.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    // d[i][j]: the distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// An environment value as TOML, typed like the key's default: a string key
/// (or one unset by default, such as an address) takes the text as it is, so
/// that `MESHKV_NODE_ID=7` is the id "7" and not a number.
pub(super) fn env_value(raw: &str, default: &serde_json::Value) -> toml::Value {
    let text = || toml::Value::String(raw.to_string());
    match default {
        serde_json::Value::Number(_) => raw
            .parse::<i64>()
            .map_or_else(|_| text(), toml::Value::Integer),
        serde_json::Value::Bool(_) => raw
            .parse::<bool>()
            .map_or_else(|_| text(), toml::Value::Boolean),
        _ => text(),
    }
}

pub(super) fn set_path(
    table: &mut toml::Table,
    path: &[String],
    value: toml::Value,
) -> Result<(), String> {
    match path {
        [] => Err("empty key".into()),
        [key] => {
            table.insert(key.clone(), value);
            Ok(())
        }
        [head, rest @ ..] => {
            let child = table
                .entry(head.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match child {
                toml::Value::Table(t) => set_path(t, rest, value),
                _ => Err(format!("`{head}` is not a table")),
            }
        }
    }
}
