//! Errors of a configuration file and where they are: every error names the file, the
//! line, the column, the TOML key and what is expected. Errors are collected with their
//! byte offsets while a file is validated ([`Report`]) and sorted into file order.

use std::{
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::model::text::shown;

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// The TOML key path (`service.backend.weight`).
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = shown(&self.file.display().to_string());
        if self.line == 0 {
            return write!(f, "{file}: {}", self.message);
        }
        write!(
            f,
            "{file}:{}:{}: {}: {}",
            self.line, self.column, self.field, self.message
        )
    }
}

/// Every problem found in a file, in file order; one a line when displayed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

pub(crate) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

/// The TOML key path at `offset`, for errors from the TOML reader: the nearest table
/// header above it and the key assigned on its line (or above, inside a multi-line array).
pub(crate) fn field_at(src: &str, offset: usize) -> String {
    let offset = offset.min(src.len());
    let end = src[offset..].find('\n').map_or(src.len(), |i| offset + i);
    let mut key: Option<String> = None;
    let mut header: Option<String> = None;
    for line in src[..end].lines().rev() {
        let t = line.trim();
        if t.starts_with('[') {
            header = Some(t.trim_matches(|c| c == '[' || c == ']').trim().to_string());
            break;
        }
        if key.is_none()
            && let Some((k, _)) = t.split_once('=')
        {
            let k = k.trim();
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                key = Some(k.to_string());
            }
        }
    }
    match (header, key) {
        (Some(h), Some(k)) => format!("{h}.{k}"),
        (Some(h), None) => h,
        (None, Some(k)) => k,
        (None, None) => "(top level)".into(),
    }
}

/// Collects errors with their byte spans; turned into `ConfigErrors` at the end.
pub(crate) struct Report<'a> {
    pub(crate) src: &'a str,
    pub(crate) file: &'a Path,
    pub(crate) errors: Vec<(usize, String, String)>,
}

impl<'a> Report<'a> {
    pub(crate) fn new(src: &'a str, file: &'a Path) -> Self {
        Report {
            src,
            file,
            errors: Vec::new(),
        }
    }

    /// Records an error at `span`; the input it quotes is shown as [`shown`] shows it
    /// (control and invisible characters escaped: one line, what was really written).
    pub(crate) fn at(&mut self, span: Range<usize>, field: &str, message: impl Into<String>) {
        self.errors.push((
            span.start,
            shown(field),
            crate::model::text::message(&message.into()),
        ));
    }

    pub(crate) fn finish(mut self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            return Ok(());
        }
        self.errors.sort_by_key(|e| e.0);
        Err(ConfigErrors(
            self.errors
                .into_iter()
                .map(|(off, field, message)| {
                    let (line, column) = line_col(self.src, off);
                    ConfigError {
                        file: self.file.to_path_buf(),
                        line,
                        column,
                        field,
                        message,
                    }
                })
                .collect(),
        ))
    }
}

pub(crate) fn one_error(
    file: &Path,
    src: &str,
    offset: usize,
    field: &str,
    message: String,
) -> ConfigErrors {
    let mut r = Report::new(src, file);
    r.at(offset..offset, field, message);
    r.finish().unwrap_err()
}

/// A TOML reader's error in `src` (read from `file`) as one error of that file, one
/// line with its line, column and key (not the reader's multi-line excerpt).
pub(crate) fn toml_error(file: &Path, src: &str, e: &toml::de::Error) -> ConfigErrors {
    let off = e.span().map_or(0, |s| s.start);
    one_error(file, src, off, &field_at(src, off), e.message().to_string())
}

/// Where in the section starting at `from` an error message points: the first of the
/// values it quotes (or the file names of paths it mentions) found there, else `from`.
pub(crate) fn locate(src: &str, from: usize, msg: &str) -> Range<usize> {
    let mut tokens: Vec<String> = Vec::new();
    for q in ['\'', '"', '`'] {
        tokens.extend(msg.split(q).skip(1).step_by(2).map(str::to_string));
    }
    for word in msg.split_whitespace() {
        let word = word.trim_matches(|c: char| c == ':' || c == ',' || c == '(' || c == ')');
        if word.contains('/')
            && let Some(name) = Path::new(word).file_name()
        {
            tokens.push(name.to_string_lossy().into_owned());
        }
    }
    tokens
        .iter()
        .filter(|t| !t.is_empty())
        .map(|t| find_value(src, from, t))
        .find(|r| r.start != from.min(src.len()))
        .unwrap_or(from..from)
}

/// The span of the first occurrence of `needle` (quoted) at or after `from`: where a
/// value of a plain (span-less) section is written.
fn find_value(src: &str, from: usize, needle: &str) -> Range<usize> {
    let quoted = format!("\"{needle}\"");
    let from = from.min(src.len());
    match src[from..]
        .find(&quoted)
        .or_else(|| src[from..].find(needle))
    {
        Some(i) => from + i..from + i + needle.len(),
        None => from..from,
    }
}
