//! Diagnostics: every problem in a configuration, each with file:line:column, the key path, what
//! was expected and, where we can tell, what to write instead.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A byte range in the configuration text.
pub type Span = Range<usize>;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The configuration is refused.
    Error,
    /// Printed, but the configuration is accepted (unless checked with `--strict`).
    Warning,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The TOML key path, e.g. `egress.corp.nat_pool` or `policy[2].apps[0]`.
    pub path: String,
    pub message: String,
    pub expected: Option<String>,
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {level}: ",
            self.file.display(),
            self.line,
            self.column
        )?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(expected) = &self.expected {
            write!(f, "\n    expected: {expected}")?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n    help: {help}")?;
        }
        Ok(())
    }
}

/// All findings of one load, in the order of the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Findings that refuse the configuration.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Error)
    }
    /// Findings that do not.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Warning)
    }
    /// True when at least one finding is an error.
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }
    /// Number of errors.
    pub fn error_count(&self) -> usize {
        self.errors().count()
    }
    fn sort(&mut self) {
        self.0.sort_by_key(|d| (d.line, d.column, d.severity));
        self.0.dedup();
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        let errors = self.error_count();
        let warnings = self.0.len() - errors;
        write!(
            f,
            "{errors} error{}, {warnings} warning{}",
            if errors == 1 { "" } else { "s" },
            if warnings == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for Diagnostics {}

/// Turns byte offsets into line and column.
#[derive(Debug)]
pub(crate) struct SourceMap<'s> {
    text: &'s str,
    line_starts: Vec<usize>,
}

impl<'s> SourceMap<'s> {
    pub(crate) fn new(text: &'s str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        SourceMap { text, line_starts }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.line_starts.get(line).copied().unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(0);
        (line + 1, column + 1)
    }
}

/// Collects findings while a configuration is read.
#[derive(Debug)]
pub(crate) struct Sink<'s> {
    file: PathBuf,
    map: SourceMap<'s>,
    found: Vec<Diagnostic>,
}

/// A finding being written; it is recorded when dropped.
#[derive(Debug)]
pub(crate) struct Finding<'a, 's> {
    sink: &'a mut Sink<'s>,
    diagnostic: Option<Diagnostic>,
}

impl Finding<'_, '_> {
    pub(crate) fn expected(mut self, text: impl Into<String>) -> Self {
        if let Some(d) = self.diagnostic.as_mut() {
            d.expected = Some(text.into());
        }
        self
    }
    pub(crate) fn help(mut self, text: impl Into<String>) -> Self {
        if let Some(d) = self.diagnostic.as_mut() {
            d.help = Some(text.into());
        }
        self
    }
    pub(crate) fn help_opt(self, text: Option<String>) -> Self {
        match text {
            Some(t) => self.help(t),
            None => self,
        }
    }
}

impl Drop for Finding<'_, '_> {
    fn drop(&mut self) {
        if let Some(d) = self.diagnostic.take() {
            self.sink.found.push(d);
        }
    }
}

impl<'s> Sink<'s> {
    pub(crate) fn new(file: &Path, text: &'s str) -> Self {
        Sink {
            file: file.to_path_buf(),
            map: SourceMap::new(text),
            found: Vec::new(),
        }
    }

    fn finding(
        &mut self,
        severity: Severity,
        span: &Span,
        path: &str,
        message: String,
    ) -> Finding<'_, 's> {
        let (line, column) = self.map.position(span.start);
        let diagnostic = Diagnostic {
            severity,
            file: self.file.clone(),
            line,
            column,
            path: path.to_string(),
            message,
            expected: None,
            help: None,
        };
        Finding {
            sink: self,
            diagnostic: Some(diagnostic),
        }
    }

    pub(crate) fn error(
        &mut self,
        span: &Span,
        path: &str,
        message: impl Into<String>,
    ) -> Finding<'_, 's> {
        self.finding(Severity::Error, span, path, message.into())
    }

    pub(crate) fn warning(
        &mut self,
        span: &Span,
        path: &str,
        message: impl Into<String>,
    ) -> Finding<'_, 's> {
        self.finding(Severity::Warning, span, path, message.into())
    }

    pub(crate) fn into_diagnostics(self) -> Diagnostics {
        let mut d = Diagnostics(self.found);
        d.sort();
        d
    }
}

/// The closest of `candidates` to `word`, if it is close enough to be a plausible typo.
pub fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let word_lc = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            (
                c,
                strsim::damerau_levenshtein(&word_lc, &c.to_ascii_lowercase()),
            )
        })
        .filter(|(c, d)| *d <= (c.len().max(word.len()) / 3).max(1) + 1 && *d < c.len().max(2))
        .min_by_key(|(_, d)| *d)
        .map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let map = SourceMap::new("a = 1\nnäme = 2\n");
        assert_eq!(map.position(0), (1, 1));
        assert_eq!(map.position(6), (2, 1));
        // byte 9 is after "nä" (3 bytes) and 'm': column counts characters
        assert_eq!(map.position(10), (2, 4));
        assert_eq!(map.position(10_000), (3, 1));
    }

    #[test]
    fn did_you_mean_finds_typos_only() {
        assert_eq!(
            did_you_mean("nat_pol", ["nat_pool", "nat_mode", "mtu"]),
            Some("nat_pool")
        );
        assert_eq!(did_you_mean("egres", ["egress", "apps"]), Some("egress"));
        assert_eq!(did_you_mean("zzzzzz", ["egress", "apps"]), None);
        assert_eq!(did_you_mean("x", ["mtu"]), None);
    }
}
