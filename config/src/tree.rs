//! The TOML document as a tree of spanned nodes, and readers that take typed values out of it
//! while recording every problem in a [`Sink`] (so one pass reports all errors, not the first).

use crate::diagnostics::{did_you_mean, Sink, Span};
use toml_edit::{Item, Value};

/// A value with the place it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(value: T, span: Span) -> Self {
        Spanned { value, span }
    }
}

impl<T> std::ops::Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub span: Span,
    pub value: NodeValue,
}

#[derive(Debug, Clone)]
pub(crate) enum NodeValue {
    Table(Vec<Entry>),
    Array(Vec<Node>),
    Str(String),
    Int(i64),
    Float,
    Bool(bool),
    Datetime,
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub key: String,
    pub key_span: Span,
    pub node: Node,
}

impl NodeValue {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            NodeValue::Table(_) => "a table",
            NodeValue::Array(_) => "an array",
            NodeValue::Str(_) => "a string",
            NodeValue::Int(_) => "an integer",
            NodeValue::Float => "a float",
            NodeValue::Bool(_) => "a boolean",
            NodeValue::Datetime => "a date-time",
        }
    }
}

pub(crate) fn from_item(item: &Item, fallback: &Span) -> Node {
    match item {
        Item::None => Node {
            span: fallback.clone(),
            value: NodeValue::Table(Vec::new()),
        },
        Item::Value(v) => from_value(v, fallback),
        Item::Table(t) => {
            let span = t.span().unwrap_or_else(|| fallback.clone());
            let entries = t
                .iter()
                .map(|(k, item)| {
                    let key_span = t
                        .key(k)
                        .and_then(|k| k.span())
                        .unwrap_or_else(|| span.clone());
                    Entry {
                        key: k.to_string(),
                        node: from_item(item, &key_span),
                        key_span,
                    }
                })
                .collect();
            Node {
                span,
                value: NodeValue::Table(entries),
            }
        }
        Item::ArrayOfTables(a) => {
            let span = a.span().unwrap_or_else(|| fallback.clone());
            let items = a
                .iter()
                .map(|t| from_item(&Item::Table(t.clone()), &span))
                .collect();
            Node {
                span,
                value: NodeValue::Array(items),
            }
        }
    }
}

fn from_value(v: &Value, fallback: &Span) -> Node {
    let span = v.span().unwrap_or_else(|| fallback.clone());
    let value = match v {
        Value::String(s) => NodeValue::Str(s.value().clone()),
        Value::Integer(i) => NodeValue::Int(*i.value()),
        Value::Float(_) => NodeValue::Float,
        Value::Boolean(b) => NodeValue::Bool(*b.value()),
        Value::Datetime(_) => NodeValue::Datetime,
        Value::Array(a) => NodeValue::Array(a.iter().map(|v| from_value(v, &span)).collect()),
        Value::InlineTable(t) => NodeValue::Table(
            t.iter()
                .map(|(k, v)| {
                    let key_span = t
                        .key(k)
                        .and_then(|k| k.span())
                        .unwrap_or_else(|| span.clone());
                    Entry {
                        key: k.to_string(),
                        node: from_value(v, &key_span),
                        key_span,
                    }
                })
                .collect(),
        ),
    };
    Node { span, value }
}

/// Joins a key path.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Reads one table: declares its keys (anything else is reported as unknown, with a
/// suggestion), then hands out typed values.
pub(crate) struct Fields<'n> {
    pub path: String,
    pub span: Span,
    entries: &'n [Entry],
}

impl<'n> Fields<'n> {
    /// Opens `node` as a table with the given allowed keys. `None` (after reporting) if it is
    /// not a table.
    pub(crate) fn open(
        sink: &mut Sink<'_>,
        node: &'n Node,
        path: &str,
        allowed: &[&str],
    ) -> Option<Self> {
        let NodeValue::Table(entries) = &node.value else {
            sink.error(
                &node.span,
                path,
                format!("expected a table, found {}", node.value.kind()),
            )
            .expected(format!("a table with keys: {}", allowed.join(", ")));
            return None;
        };
        for e in entries {
            if !allowed.contains(&e.key.as_str()) {
                let suggestion = did_you_mean(&e.key, allowed.iter().copied());
                sink.error(&e.key_span, &join(path, &e.key), "unknown key")
                    .expected(format!("one of: {}", allowed.join(", ")))
                    .help_opt(suggestion.map(|s| format!("did you mean `{s}`?")));
            }
        }
        Some(Fields {
            path: path.to_string(),
            span: node.span.clone(),
            entries,
        })
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'n Entry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// Where the value of `key` is written, or the table when it is not.
    pub(crate) fn value_span(&self, key: &str) -> Span {
        self.get(key)
            .map_or_else(|| self.span.clone(), |e| e.node.span.clone())
    }

    pub(crate) fn key_path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Reports a missing required key.
    pub(crate) fn missing(&self, sink: &mut Sink<'_>, key: &str, expected: &str) {
        sink.error(&self.span, &self.key_path(key), "required key is missing")
            .expected(expected.to_string())
            .help(format!("add `{key} = …` to [{}]", self.path));
    }

    /// Reads a key with `read`, reporting a missing one when `required` describes it.
    pub(crate) fn with<T>(
        &self,
        sink: &mut Sink<'_>,
        key: &str,
        required: Option<&str>,
        read: impl FnOnce(&mut Sink<'_>, &Node, &str) -> Option<T>,
    ) -> Option<T> {
        match self.get(key) {
            Some(e) => read(sink, &e.node, &self.key_path(key)),
            None => {
                if let Some(expected) = required {
                    self.missing(sink, key, expected);
                }
                None
            }
        }
    }
}

/// Reports a type mismatch.
pub(crate) fn wrong_type(sink: &mut Sink<'_>, node: &Node, path: &str, expected: &str) {
    sink.error(
        &node.span,
        path,
        format!("expected {expected}, found {}", node.value.kind()),
    )
    .expected(expected.to_string());
}

pub(crate) fn string(sink: &mut Sink<'_>, node: &Node, path: &str) -> Option<Spanned<String>> {
    match &node.value {
        NodeValue::Str(s) => Some(Spanned::new(s.clone(), node.span.clone())),
        _ => {
            wrong_type(sink, node, path, "a string");
            None
        }
    }
}

pub(crate) fn boolean(sink: &mut Sink<'_>, node: &Node, path: &str) -> Option<bool> {
    match &node.value {
        NodeValue::Bool(b) => Some(*b),
        _ => {
            wrong_type(sink, node, path, "`true` or `false`");
            None
        }
    }
}

pub(crate) fn integer(
    sink: &mut Sink<'_>,
    node: &Node,
    path: &str,
    min: i64,
    max: i64,
) -> Option<i64> {
    match &node.value {
        NodeValue::Int(i) if (min..=max).contains(i) => Some(*i),
        NodeValue::Int(i) => {
            sink.error(&node.span, path, format!("{i} is out of range"))
                .expected(format!("an integer from {min} to {max}"));
            None
        }
        _ => {
            wrong_type(sink, node, path, &format!("an integer from {min} to {max}"));
            None
        }
    }
}

/// A string parsed by `parse`, whose error message is reported at the value.
pub(crate) fn parsed<T, E: std::fmt::Display>(
    sink: &mut Sink<'_>,
    node: &Node,
    path: &str,
    expected: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Option<Spanned<T>> {
    let s = string(sink, node, path)?;
    match parse(&s.value) {
        Ok(v) => Some(Spanned::new(v, s.span)),
        Err(e) => {
            sink.error(&node.span, path, format!("`{}`: {e}", s.value))
                .expected(expected.to_string());
            None
        }
    }
}

/// One of a fixed set of strings.
pub(crate) fn choice<T: Copy>(
    sink: &mut Sink<'_>,
    node: &Node,
    path: &str,
    choices: &[(&str, T)],
) -> Option<T> {
    let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
    let expected = format!("one of: {}", names.join(", "));
    let s = match &node.value {
        NodeValue::Str(s) => s,
        _ => {
            wrong_type(sink, node, path, &expected);
            return None;
        }
    };
    if let Some((_, v)) = choices.iter().find(|(n, _)| *n == s.as_str()) {
        return Some(*v);
    }
    let suggestion = did_you_mean(s, names.iter().copied());
    sink.error(&node.span, path, format!("`{s}` is not a valid value"))
        .expected(expected)
        .help_opt(suggestion.map(|s| format!("did you mean `{s}`?")));
    None
}

/// An array whose items are read by `item`; a single value is accepted as a one-item array
/// when `single_ok`. Bad items are reported and skipped.
pub(crate) fn array<T>(
    sink: &mut Sink<'_>,
    node: &Node,
    path: &str,
    single_ok: bool,
    mut item: impl FnMut(&mut Sink<'_>, &Node, &str) -> Option<T>,
) -> Option<Vec<T>> {
    match &node.value {
        NodeValue::Array(items) => Some(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, n)| item(sink, n, &format!("{path}[{i}]")))
                .collect(),
        ),
        _ if single_ok => item(sink, node, path).map(|v| vec![v]),
        _ => {
            wrong_type(sink, node, path, "an array");
            None
        }
    }
}
