//! Config parsing: any TOML file text and any MESHKV_* variables either load
//! into a valid config or give an error; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshkv::config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line, if it looks like NAME=VALUE pairs, becomes the environment.
    let (env_line, file) = text.split_once('\n').unwrap_or(("", text));
    let env: Vec<(String, String)> = env_line
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (format!("MESHKV_{k}"), v.to_string()))
        .collect();
    let dir = std::env::temp_dir().join(format!("meshkv-fuzz-config-{}", std::process::id()));
    if std::fs::write(&dir, file).is_err() {
        return;
    }
    if let Ok(loaded) = config::load(Some(&dir), env, config::Overrides::default()) {
        loaded
            .config
            .validate()
            .expect("load only returns valid configs");
    }
});
