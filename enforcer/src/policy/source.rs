//! Policy source files: loading a file or a directory of files, and turning byte
//! offsets into `file:line:col`.

use std::{
    fs, io,
    ops::Range,
    path::{Path, PathBuf},
};

/// A place in a policy source: which file and which bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Span {
    /// Index of the file in its [`SourceSet`].
    pub file: usize,
    /// Byte range within the file.
    pub range: Range<usize>,
}

/// One loaded policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// The path as given (or found in a given directory), for messages.
    pub path: String,
    /// The file's text.
    pub text: String,
}

/// Every file a policy was loaded from, in merge order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceSet {
    /// The files, in the order their rules are declared.
    pub files: Vec<SourceFile>,
}

/// A policy path that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A directory holds no `*.toml` file.
    #[error("{0}: no *.toml policy files in this directory")]
    EmptyDirectory(String),
}

impl SourceSet {
    /// Loads each path: a file as itself, a directory as its `*.toml` files in name order
    /// (not recursing). Files keep the order of `paths`.
    pub fn load(paths: &[PathBuf]) -> Result<Self, SourceError> {
        let mut set = Self::default();
        for path in paths {
            let read_error = |source| SourceError::Read {
                path: path.display().to_string(),
                source,
            };
            if path.is_dir() {
                let mut found: Vec<PathBuf> = fs::read_dir(path)
                    .map_err(read_error)?
                    .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                    .filter(|file| file.is_file() && file.extension().is_some_and(|e| e == "toml"))
                    .collect();
                found.sort();
                if found.is_empty() {
                    return Err(SourceError::EmptyDirectory(path.display().to_string()));
                }
                for file in found {
                    set.push_file(&file)?;
                }
            } else {
                set.push_file(path)?;
            }
        }
        Ok(set)
    }

    fn push_file(&mut self, path: &Path) -> Result<(), SourceError> {
        let text = fs::read_to_string(path).map_err(|source| SourceError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.add(path.display().to_string(), text);
        Ok(())
    }

    /// Adds a file from memory (tests, bundles); returns its index.
    pub fn add(&mut self, path: impl Into<String>, text: impl Into<String>) -> usize {
        self.files.push(SourceFile {
            path: path.into(),
            text: text.into(),
        });
        self.files.len() - 1
    }

    /// 1-based line and column (in characters) of a byte offset in a file.
    pub fn line_col(&self, file: usize, offset: usize) -> (usize, usize) {
        let text = &self.files[file].text;
        let offset = offset.min(text.len());
        let before = &text[..text.floor_char_boundary(offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    /// `path:line:col` of a span's start.
    pub fn location(&self, span: &Span) -> String {
        let (line, col) = self.line_col(span.file, span.range.start);
        format!("{}:{line}:{col}", self.files[span.file].path)
    }

    /// The source text a span covers.
    pub fn text(&self, span: &Span) -> &str {
        let text = &self.files[span.file].text;
        let start = text.floor_char_boundary(span.range.start);
        let end = text.floor_char_boundary(span.range.end);
        &text[start..end.max(start)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let mut set = SourceSet::default();
        let file = set.add("p.toml", "a = 1\nbé = \"x\"\n");
        assert_eq!(set.line_col(file, 0), (1, 1));
        assert_eq!(set.line_col(file, 6), (2, 1));
        // "bé = " is 6 bytes but 5 characters.
        assert_eq!(set.line_col(file, 6 + 6), (2, 6));
        let span = Span { file, range: 6..9 };
        assert_eq!(set.location(&span), "p.toml:2:1");
        assert_eq!(set.text(&span), "bé");
    }
}
