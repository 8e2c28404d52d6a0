//! Events: one line per state change, to the log (target `attestgate::event`) and, when
//! `[events] file` is set, appended as JSON to that file.

use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Debug, Default)]
pub struct EventLog {
    file: Mutex<Option<PathBuf>>,
    write_lock: Mutex<()>,
}

impl EventLog {
    pub fn set_file(&self, path: Option<PathBuf>) {
        if let Ok(mut f) = self.file.lock() {
            *f = path;
        }
    }

    /// Records an event: `kind` like `config.applied`, fields as key/value pairs.
    pub fn emit(&self, kind: &str, fields: Value) {
        let text = match &fields {
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}={s:?}"),
                    other => format!("{k}={other}"),
                })
                .collect::<Vec<_>>()
                .join(" "),
            other => other.to_string(),
        };
        tracing::info!(target: "attestgate::event", event = kind, "{text}");
        let path = self.file.lock().ok().and_then(|f| f.clone());
        if let Some(path) = path {
            let mut line = Map::new();
            line.insert(
                "ts".into(),
                json!(crate::timefmt::rfc3339(crate::timefmt::unix(
                    SystemTime::now()
                ))),
            );
            line.insert("event".into(), json!(kind));
            if let Value::Object(m) = fields {
                line.extend(m);
            }
            // One write of the whole line, under a lock: events come from several tasks, and a
            // line must never interleave with another.
            let mut text = Value::Object(line).to_string();
            text.push('\n');
            let _guard = self.write_lock.lock();
            let result = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(text.as_bytes()));
            if let Err(e) = result {
                tracing::warn!(path = %path.display(), error = %e, "cannot append to the events file");
            }
        }
    }
}
